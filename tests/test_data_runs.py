"""Real-shaped MRC data through the training entry point: which data a run uses (and says it uses), KLUE-MRC and
SQuAD v2 from local files scored by their official rules, and record-level faults that never sink a run."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from experiments.config import ConfigError, load_config
from experiments.qa_eval import klue_mrc_scores, squad_v2_scores
from experiments.train import main
from tests.conftest import REPO, run_dirs
from tests.qa_samples import (
    KLUE_DEV,
    KLUE_TRAIN,
    KORQUAD_QAS,
    LONG_QUESTION_CONTEXT,
    SQUAD_V2_QAS,
    klue_doc,
    korquad_doc,
    squad_v2_doc,
    write_json,
)

SAMPLE_TRAIN = REPO / "tests" / "data" / "sample_train.json"
SAMPLE_DEV = REPO / "tests" / "data" / "sample_dev.jsonl"
KLUE = str(REPO / "configs" / "data" / "klue_mrc.yaml")
FILES = [f"data.train_file={SAMPLE_TRAIN}", f"data.validation_file={SAMPLE_DEV}"]


def only_run(results_dir) -> Path:
    dirs = run_dirs(results_dir)
    assert len(dirs) == 1, dirs
    return dirs[0]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def events(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------- item 1: the data asked for
def test_file_keys_are_enough_on_top_of_any_config():
    for files in ([], [REPO / "configs" / "default.yaml"], [REPO / "configs" / "smoke.yaml"]):
        assert load_config(files, FILES).data.source == "files"
    notes: list = []
    cfg = load_config([KLUE], FILES, notes=notes)
    assert (cfg.data.source, cfg.data.id_field, cfg.data.metric) == ("files", "guid", "klue")
    assert notes == [
        "data: data.train_file/data.validation_file win over data.source=hub (data.hub_path='klue', "
        "data.hub_name='mrc' not read): the files are read as that set's local copy with "
        "data.id_field='guid' and scored with data.metric=klue"
    ]
    notes.clear()
    load_config([REPO / "configs" / "smoke.yaml"], FILES, notes=notes)
    assert notes == [
        "data: data.generated.n_train=48, data.generated.n_dev=24 not used: the data come from local files"
    ]
    assert (
        load_config([], []).data.source == "generated" and load_config([], ["data.hub_path=squad"]).data.source == "hub"
    )
    notes.clear()
    load_config([], ["data.id_field=guid", "eval.null_score_diff_threshold=1.5"], notes=notes)
    assert notes == [
        "data: data.id_field='guid' not used: the generated set keeps its ids in 'id'",
        "data: eval.null_score_diff_threshold=1.5 not used: data.version_2_with_negative=false never "
        'predicts "no answer" from the null score',
    ]


CONFLICTS = [
    ([f"data.train_file={SAMPLE_TRAIN}"], "data.validation_file is required with data.train_file"),
    ([f"data.validation_file={SAMPLE_DEV}"], "data.train_file is required with data.validation_file"),
    (["data.source=generated", *FILES], "data.source=generated conflicts with data.train_file/data.validation_file"),
    (
        ["data.source=generated", "data.hub_path=squad"],
        "data.hub_path='squad' has no effect with data.source=generated",
    ),
    (["data.hub_name=mrc"], "data.hub_name='mrc' has no effect without data.hub_path"),
    (["data.hub_train_split=train[:10%]"], "data.hub_train_split='train[:10%]' has no effect without data.hub_path"),
    (
        ["data.train_file=/nonexistent/t.json", f"data.validation_file={SAMPLE_DEV}"],
        "data.train_file='/nonexistent/t.json': no such file",
    ),
    (["data.metric=klue"], "train.save_best_by=dev/f1 is not reported with data.metric=klue"),
    (["train.save_best_by=dev/rouge_w"], "train.save_best_by=dev/rouge_w is not reported with data.metric=squad"),
]


@pytest.mark.parametrize("overrides, message", CONFLICTS, ids=[m[:40] for _, m in CONFLICTS])
def test_settings_that_conflict_or_do_nothing_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config([REPO / "configs" / "default.yaml"], overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_default_config_with_file_keys_trains_on_the_files_and_says_so(tiny_run, tmp_path, capsys):
    """The issue's command: configs/default.yaml data.train_file=... data.validation_file=... (here on smoke)."""
    code = main([str(REPO / "configs" / "default.yaml"), *tiny_run("adamw", *FILES, "train.max_updates=2")])
    err = capsys.readouterr().err
    assert code == 0, err
    s = summary(only_run(tmp_path))
    assert s["data"]["source"] == "files"
    assert (s["data"]["train_examples"], s["data"]["dev_examples"]) == (8, 5)  # the files' records, not generated
    assert s["data"]["used"]["train"]["path"] == str(SAMPLE_TRAIN)
    assert s["data"]["used"]["dev"]["path"] == str(SAMPLE_DEV)
    line = [x for x in err.splitlines() if x.startswith("data: files ")]
    assert line == [
        f"data: files train={SAMPLE_TRAIN} (8 examples, sha256 {s['data']['used']['train']['sha256'][:12]})"
        f" dev={SAMPLE_DEV} (5 examples, sha256 {s['data']['used']['dev']['sha256'][:12]})"
    ]
    assert "data: data.generated.n_train=16, data.generated.n_dev=8 not used" in err  # the fixture's generated keys


def test_conflict_on_the_command_line_exits_2_and_writes_nothing(tiny_run, tmp_path, capsys):
    assert main(tiny_run("adamw", "data.source=generated", *FILES)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("config error: data.source=generated conflicts with") and len(err) == 1
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------- items 2 + 3: KLUE-MRC from local files
def test_klue_mrc_from_the_official_json_scored_with_em_and_rouge_w(tiny_run, tmp_path, capsys):
    train = write_json(tmp_path, "klue-mrc-v1.1_train.json", klue_doc(KLUE_TRAIN))
    dev = write_json(tmp_path, "klue-mrc-v1.1_dev.json", klue_doc(KLUE_DEV))
    results = tmp_path / "results"
    args = tiny_run(
        "sam_full",
        KLUE,
        f"data.train_file={train}",
        f"data.validation_file={dev}",
        "data.max_seq_length=64",
        "data.doc_stride=16",
        "train.max_updates=2",
        f"results_dir={results}",
    )
    code = main(args)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "data.train_file/data.validation_file win over data.source=hub (data.hub_path='klue'" in err
    run = only_run(results)
    s = summary(run)
    assert s["data"]["used"]["train"]["path"] == str(train) and s["data"]["unanswerable"] == {"train": 2, "dev": 1}
    evals = [e for e in events(run) if "dev/em" in e]
    assert evals and all("dev/rouge_w" in e and "dev/f1" not in e for e in evals)
    assert {"dev/has_ans_em", "dev/has_ans_rouge_w", "dev/no_ans_em", "dev/no_ans_rouge_w"} <= set(evals[-1])
    assert s["best"]["metric"] == "dev/rouge_w"
    assert s["scores"]["rules"] == "KLUE-baseline klue_baseline/metrics (EM, ROUGE-W)"
    assert (s["scores"]["HasAns_total"], s["scores"]["NoAns_total"]) == (2, 1)
    # the logged ROUGE-W is KLUE's on predictions.json against the file's golds (impossible -> no gold)
    predictions = json.loads((run / "predictions.json").read_text())
    assert set(predictions) == {guid for _, _, qas in KLUE_DEV for guid, *_ in qas}
    golds = {guid: ([answer] if answer else []) for _, _, qas in KLUE_DEV for guid, _, answer, *_ in qas}
    assert s["final"]["dev/rouge_w"] == pytest.approx(klue_mrc_scores(predictions, golds)["rouge_w"])
    assert re.search(
        r"completed: .*\n  dev/rouge_w [0-9.]+  dev/em [0-9.]+  dev/has_ans_rouge_w [0-9.]+  "
        r"dev/no_ans_rouge_w [0-9.]+  dev/loss",
        err,
    ), err


def test_korquad_style_file_is_scored_with_character_f1(tiny_run, tmp_path):
    path = write_json(tmp_path, "KorQuAD_v1.0_dev.json", korquad_doc())
    code = main(
        tiny_run(
            "adamw",
            str(REPO / "configs" / "data" / "korquad.yaml"),
            f"data.train_file={path}",
            f"data.validation_file={path}",
            "data.max_seq_length=64",
            "data.doc_stride=16",
            "train.max_updates=1",
        )
    )
    assert code == 0
    s = summary(only_run(tmp_path))
    assert s["scores"]["rules"] == "KorQuAD v1.0 evaluate-v1.0.py" and s["data"]["dev_examples"] == len(KORQUAD_QAS)


# ----------------------------------------------------------------------------------------- item 4: SQuAD v2 rules
def test_squad_v2_run_logs_the_breakdown_and_puts_it_in_the_summary(tiny_run, tmp_path):
    path = write_json(tmp_path, "dev-v2.0.json", squad_v2_doc())
    code = main(
        tiny_run(
            "adamw",
            str(REPO / "configs" / "data" / "squad_v2.yaml"),
            f"data.train_file={path}",
            f"data.validation_file={path}",
            "data.max_seq_length=64",
            "data.doc_stride=16",
            "train.max_updates=1",
        )
    )
    assert code == 0
    run = only_run(tmp_path)
    s = summary(run)
    final = [e for e in events(run) if "dev/em" in e][-1]
    assert {
        "dev/has_ans_em",
        "dev/has_ans_f1",
        "dev/no_ans_em",
        "dev/no_ans_f1",
        "dev/best_f1",
        "dev/best_f1_thresh",
    } <= set(final)
    # SQUAD_V2_QAS: 4 questions with answers, 2 without
    assert (s["scores"]["HasAns_total"], s["scores"]["NoAns_total"], s["scores"]["total"]) == (4, 2, 6)
    predictions = json.loads((run / "predictions.json").read_text())
    official = squad_v2_scores(predictions, {qid: answers for qid, _, answers, _ in SQUAD_V2_QAS})
    for name in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
        assert s["scores"][name] == pytest.approx(official[name]), name
    assert final["dev/has_ans_f1"] == pytest.approx(official["HasAns_f1"])


def test_v1_run_on_unanswerable_data_warns_and_counts(tiny_run, tmp_path, caplog):
    path = write_json(tmp_path, "dev-v2.0.json", squad_v2_doc())
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        assert (
            main(
                tiny_run(
                    "adamw",
                    f"data.train_file={path}",
                    f"data.validation_file={path}",
                    "train.max_updates=1",
                    "data.version_2_with_negative=false",  # chosen (without it the file's is_impossible picks v2)
                )
            )
            == 0
        )
    assert caplog.text.count("questions have no answer but data.version_2_with_negative=false") == 1
    assert summary(only_run(tmp_path))["data"]["unanswerable"] == {"train": 2, "dev": 2}


# ----------------------------------------------------------------------- items 5 + 6: faults that never sink a run
def _long_question_file(tmp_path: Path) -> Path:
    """Flat JSON: one question of 31 tokens (31 'lamp') over a long context, one ordinary question."""
    c = LONG_QUESTION_CONTEXT
    records = [
        {
            "id": "long-q",
            "context": c,
            "question": " ".join(["lamp"] * 31),
            "answers": {"text": ["Brisk Hadde"], "answer_start": [c.index("Brisk Hadde")]},
        },
        {
            "id": "short-q",
            "context": c,
            "question": "Who wrote the tower book?",
            "answers": {"text": ["Ferris Galloway"], "answer_start": [c.index("Ferris Galloway")]},
        },
    ]
    return write_json(tmp_path, "long_question.json", records)


def test_doc_stride_the_config_accepts_never_crashes_the_tokenizer(tiny_run, tmp_path, capsys, caplog):
    """smoke.yaml (max_seq_length 64) with data.doc_stride=30 and a 31-token question: a Rust panic before."""
    path = _long_question_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        code = main(
            tiny_run(
                "adamw",
                f"data.train_file={path}",
                f"data.validation_file={SAMPLE_DEV}",
                "data.doc_stride=30",
                "train.max_updates=1",
            )
        )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err and "panicked" not in err
    # the question is cut to 64 - 3 - 30 - 1 = 30 tokens: counted and said
    assert summary(only_run(tmp_path))["data"]["questions_cut"] == {"train": 1, "dev": 0, "limit_tokens": 30}
    assert "data: 1 train / 0 dev questions are longer than 30 tokens and are cut to 30" in caplog.text


def _faulty_file(tmp_path: Path) -> Path:
    """JSON lines: good, a lone surrogate escape in the context (line 2), good, a context of zero-width spaces only
    (line 4), good."""
    good = json.loads(SAMPLE_DEV.read_text().splitlines()[0])
    lines = [
        json.dumps({**good, "id": "ok-1"}),
        json.dumps(
            {
                **good,
                "id": "bad-surrogate",
                "context": "\ud83d" + good["context"],
                "answers": {
                    "text": good["answers"]["text"],
                    "answer_start": [s + 1 for s in good["answers"]["answer_start"]],
                },
            }
        ),
        json.dumps({**good, "id": "ok-2"}),
        json.dumps(
            {
                "id": "bad-blank",
                "context": "\u200b\u200b\u200b",
                "question": "Who?",
                "answers": {"text": [], "answer_start": []},
            }
        ),
        json.dumps({**good, "id": "ok-3"}),
    ]
    path = tmp_path / "faulty.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("split", ["train", "dev"])
def test_record_faults_strict_one_line_naming_file_record_and_id(tiny_run, tmp_path, capsys, split):
    path = _faulty_file(tmp_path)
    keys = (
        [f"data.train_file={path}", f"data.validation_file={SAMPLE_DEV}"]
        if split == "train"
        else [f"data.train_file={SAMPLE_TRAIN}", f"data.validation_file={path}"]
    )
    assert main(tiny_run("adamw", *keys)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: {path}: line 2 (id 'bad-surrogate'): field 'context' holds a lone UTF-16 surrogate "
        "'\\ud83d' at character 0 (valid JSON escape, not valid Unicode text); data.strict=false "
        "skips such records"
    )
    assert not (tmp_path / "runs").exists()
    # without the surrogate, the next fault is found while tokenising, and named the same way
    clean = path.read_text().splitlines()
    del clean[1]
    path.write_text("\n".join(clean) + "\n")
    assert main(tiny_run("adamw", *keys)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: {path}: line 3 (id 'bad-blank'): the context has no token this tokenizer keeps "
        "(only characters it drops, e.g. zero-width, control or combining marks); data.strict=false "
        "skips such records"
    )
    assert not [line for line in err if "Traceback" in line]
    assert not (tmp_path / "runs").exists()


def test_record_faults_lenient_are_skipped_counted_and_the_run_goes_on(tiny_run, tmp_path, capsys, caplog):
    path = _faulty_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        code = main(
            tiny_run(
                "adamw",
                f"data.train_file={path}",
                f"data.validation_file={path}",
                "data.strict=false",
                "train.max_updates=1",
            )
        )
    err = capsys.readouterr().err
    assert code == 0, err
    s = summary(only_run(tmp_path))
    # per split: 5 records, 1 skipped while reading (surrogate) and 1 while tokenising (no context token)
    assert s["data"]["skipped_records"] == {"train": 2, "dev": 2}
    assert s["data"]["skip_reasons"] == {"invalid_unicode": 2, "no_context_tokens": 2}
    assert (s["data"]["train_examples"], s["data"]["dev_examples"]) == (3, 3)
    predictions = json.loads((only_run(tmp_path) / "predictions.json").read_text())
    assert set(predictions) == {"ok-1", "ok-2", "ok-3"}
    assert f"skipped record: {path}: line 4 (id 'bad-blank'): the context has no token" in caplog.text


# ------------------------------------------------------------------ issue 21 item 8: a local file's own markers
def _korquad_f1(prediction: str, gold: str) -> float:
    """KorQuAD's evaluate-v1.0.py f1_score, written out: remove_ (quotes, 《》<>〈〉()‘’ → space), lower, drop
    string.punctuation, collapse whitespace; then F1 over the characters of the space-separated tokens."""
    import string
    from collections import Counter

    def normalize(s: str) -> str:
        for ch in "'\"《》<>〈〉()‘’":
            s = s.replace(ch, " ")
        s = "".join(c for c in s.lower() if c not in set(string.punctuation))
        return " ".join(s.split())

    p = [c for tok in normalize(prediction).split() for c in tok]
    g = [c for tok in normalize(gold).split() for c in tok]
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def test_a_korquad_file_without_its_config_is_scored_with_character_f1(tiny_run, tmp_path, capsys):
    path = write_json(tmp_path, "KorQuAD_v1.0_dev.json", korquad_doc())
    args = tiny_run("adamw", f"data.train_file={path}", f"data.validation_file={path}", "train.max_updates=1")
    args = [a for a in args if not a.startswith("data.generated.")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert (
        "data: data.validation_file is a KorQuAD 1.0 file (version 'KorQuAD_v1.0_dev'): scored by its rules, "
        "data.metric=char (as configs/data/korquad.yaml sets them)"
    ) in err
    run = only_run(tmp_path)
    s = summary(run)
    assert s["scores"]["rules"] == "KorQuAD v1.0 evaluate-v1.0.py"
    predictions = json.loads((run / "predictions.json").read_text())
    golds = {qid: answer for qid, _, answer in KORQUAD_QAS}
    expected = 100 * sum(_korquad_f1(predictions[q], golds[q]) for q in golds) / len(golds)
    assert s["final"]["dev/f1"] == pytest.approx(expected, abs=1e-9)


def test_the_official_rule_written_out_is_character_f1():
    """The written-out rule on hand-made pairs: 1902년 vs 1902 shares 4 of 5 / 4 of 4 characters → F1 = 8/9."""
    assert _korquad_f1("1902", "1902년") == pytest.approx(2 * (4 / 4) * (4 / 5) / (4 / 4 + 4 / 5))
    assert _korquad_f1("서른 권", "서른권") == 1.0 and _korquad_f1("(최은별)", "최은별") == 1.0


@pytest.mark.parametrize(
    "doc, settings",
    [
        (klue_doc(KLUE_DEV), ("klue", "guid", True, "dev/rouge_w")),
        (squad_v2_doc(), ("squad", "id", True, "dev/f1")),
        (korquad_doc(), ("char", "id", False, "dev/f1")),
    ],
    ids=["klue", "squad_v2", "korquad"],
)
def test_local_files_pick_their_rules_from_their_markers(doc, settings, tmp_path):
    path = write_json(tmp_path, "dev.json", doc)
    for base in ([], [REPO / "configs" / "default.yaml"]):  # "on top of any config" (default.yaml repeats defaults)
        cfg = load_config(base, [f"data.train_file={path}", f"data.validation_file={path}"])
        d = cfg.data
        assert (d.metric, d.id_field, d.version_2_with_negative, cfg.train.save_best_by) == settings
    # a plain SQuAD v1.1 file keeps the SQuAD v1.1 rules
    plain = load_config([], FILES).data
    assert (plain.metric, plain.id_field, plain.version_2_with_negative) == ("squad", "id", False)


def test_a_local_file_with_contrary_rules_set_is_refused_naming_its_data_config(tmp_path):
    path = write_json(tmp_path, "KorQuAD_v1.0_dev.json", korquad_doc())
    with pytest.raises(ConfigError) as info:
        load_config([], [f"data.train_file={path}", f"data.validation_file={path}", "data.metric=squad"])
    assert str(info.value) == (
        f"data.validation_file={path} is a KorQuAD 1.0 file (version 'KorQuAD_v1.0_dev') but data.metric=squad (set "
        "by override 'data.metric=squad') is not its rule; add configs/data/korquad.yaml (it sets data.metric=char)"
    )
    klue = write_json(tmp_path, "klue.json", klue_doc(KLUE_DEV))
    with pytest.raises(ConfigError, match="is a KLUE-MRC file .* add configs/data/klue_mrc.yaml"):
        load_config([], [f"data.train_file={klue}", f"data.validation_file={klue}", "data.metric=char"])


@pytest.mark.parametrize(
    "overrides, settings",
    [
        (["data.hub_path=KorQuAD/squad_kor_v1"], ("char", "id", False)),
        (["data.hub_path=klue", "data.hub_name=mrc"], ("klue", "guid", True)),
        (["data.hub_path=rajpurkar/squad_v2"], ("squad", "id", True)),
        (["data.hub_path=squad"], ("squad", "id", False)),
    ],
    ids=["korquad", "klue", "squad_v2", "squad"],
)
def test_a_hub_set_without_its_data_config_is_scored_by_its_official_rules(overrides, settings):
    """The same class on the hub: data.hub_path=KorQuAD/squad_kor_v1 alone must not get SQuAD v1.1's token F1."""
    d = load_config([], overrides).data
    assert (d.metric, d.id_field, d.version_2_with_negative) == settings
    with pytest.raises(ConfigError, match="is a KorQuAD 1.0 set on the hub but data.metric=squad"):
        load_config([], ["data.hub_path=KorQuAD/squad_kor_v1", "data.metric=squad"])
