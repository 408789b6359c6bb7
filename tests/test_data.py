"""experiments.data: raw examples from local files, the hub and the generated set; the heuristic floor."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import pytest

from experiments.config import load_config
from experiments.data import DataError, load_examples
from experiments.data.baseline import _TYPE_PATTERNS, heuristic_answer, heuristic_baseline, question_type
from experiments.data.files import read_squad_file
from experiments.data.generated import ensure_generated, generate_records, generator_settings
from experiments.data.generated_text import RELATIONS
from tests.qa_samples import KLUE_DEV, KLUE_TRAIN, klue_doc, squad_v2_doc, write_json

REPO = Path(__file__).resolve().parent.parent
SAMPLE_TRAIN = REPO / "tests" / "data" / "sample_train.json"
SAMPLE_DEV = REPO / "tests" / "data" / "sample_dev.jsonl"


def files_cfg(train: Path, dev: Path = SAMPLE_DEV, *extra: str):
    return load_config([], ["data.source=files", f"data.train_file={train}", f"data.validation_file={dev}", *extra])


def generated_cfg(tmp_path: Path, *extra: str):
    return load_config([], [f"data.generated.cache_dir={tmp_path / 'gen'}", *extra])


# ------------------------------------------------------------------------------------------ one data set, 4 layouts
# Two fictional paragraphs written once; the nested and the flat layouts are built from this table independently.
PARAGRAPHS = [
    (
        "Ambrel",
        "The mill of Ambrel was built by Tova Rusk in 1702. Its wheel turned for ninety years.",
        [("a1", "Who built the mill of Ambrel?", ["Tova Rusk"]), ("a2", "When was the mill built?", ["1702"])],
    ),
    (
        "Ambrel",
        "Ferries leave Ambrel for the island of Quenby twice a day.",
        [("a3", "Where do the ferries go?", ["Quenby", "the island of Quenby"])],
    ),
    ("Dorrow", "Dorrow is known for blue glass.", [("d1", "What is Dorrow known for?", ["blue glass"])]),
]


def _answers(context: str, texts: list[str]) -> list[dict]:
    return [{"text": t, "answer_start": context.index(t)} for t in texts]


def nested_doc() -> dict:
    articles: dict[str, list] = {}
    for title, context, qas in PARAGRAPHS:
        articles.setdefault(title, []).append(
            {"context": context, "qas": [{"id": i, "question": q, "answers": _answers(context, a)} for i, q, a in qas]}
        )
    return {"version": "1.1", "data": [{"title": t, "paragraphs": ps} for t, ps in articles.items()]}


def flat_records() -> list[dict]:
    out = []
    for title, context, qas in PARAGRAPHS:
        for i, q, a in qas:
            spans = _answers(context, a)
            out.append(
                {
                    "id": i,
                    "title": title,
                    "context": context,
                    "question": q,
                    "answers": {"text": [s["text"] for s in spans], "answer_start": [s["answer_start"] for s in spans]},
                }
            )
    return out


def test_nested_flat_and_jsonl_layouts_load_to_identical_examples(tmp_path):
    (tmp_path / "nested.json").write_text(json.dumps(nested_doc(), indent=2))
    (tmp_path / "list.json").write_text(json.dumps(flat_records()))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": "x", "data": flat_records()}))
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in flat_records()) + "\n")
    (tmp_path / "lines.txt").write_text("\n\n".join(json.dumps(r) for r in flat_records()))  # detected by content

    loaded = {
        name: load_examples(files_cfg(tmp_path / name).data)[0].to_list()
        for name in ("nested.json", "list.json", "wrapped.json", "lines.jsonl", "lines.txt")
    }
    reference = loaded.pop("nested.json")
    assert len(reference) == 4
    ferry = PARAGRAPHS[1][1]
    assert reference[2] == {
        "id": "a3",
        "title": "Ambrel",
        "context": ferry,
        "question": "Where do the ferries go?",
        "answers": {
            "text": ["Quenby", "the island of Quenby"],
            "answer_start": [ferry.index("Quenby"), ferry.index("the island")],
        },
    }
    for name, examples in loaded.items():
        assert examples == reference, name


def test_shipped_sample_pair_and_limits():
    cfg = load_config(["configs/data/local_files.yaml"])
    train, dev, stats = load_examples(cfg.data)
    assert train.column_names == ["id", "title", "context", "question", "answers"]
    used = stats.pop("used")
    assert stats == {
        "source": "files",
        "train_examples": 8,
        "dev_examples": 5,
        "skipped_records": {"train": 0, "dev": 0},
        "skip_reasons": {},
        "unanswerable": {"train": 0, "dev": 0},
    }
    # what was read, as summary.json records it: the resolved path, its size and content hash, the examples kept
    assert used["train"] == {
        "kind": "file",
        "key": "data.train_file",
        "path": str(SAMPLE_TRAIN),
        "bytes": SAMPLE_TRAIN.stat().st_size,
        "sha256": hashlib.sha256(SAMPLE_TRAIN.read_bytes()).hexdigest(),
        "examples": 8,
    }
    assert used["dev"]["path"] == str(SAMPLE_DEV) and used["dev"]["key"] == "data.validation_file"
    train3, dev2, stats = load_examples(
        load_config(["configs/data/local_files.yaml"], ["data.max_train_examples=3", "data.max_eval_examples=2"]).data
    )
    assert train3["id"] == train["id"][:3] and dev2["id"] == dev["id"][:2]
    assert (stats["train_examples"], stats["dev_examples"]) == (3, 2)


def test_squad_v2_is_impossible_gives_empty_answers(tmp_path):
    context = "The bell of Harrow rang at dawn."
    doc = {
        "version": "v2.0",
        "data": [
            {
                "title": "Harrow",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": "v1",
                                "question": "What rang at dawn?",
                                "is_impossible": False,
                                "answers": [{"text": "The bell of Harrow", "answer_start": 0}],
                            },
                            {
                                "id": "v2",
                                "question": "Who cast the bell?",
                                "is_impossible": True,
                                "answers": [],
                                "plausible_answers": [{"text": "Harrow", "answer_start": 12}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "v2.json").write_text(json.dumps(doc))
    records, reasons = read_squad_file(tmp_path / "v2.json")
    assert [r["answers"] for r in records] == [
        {"text": ["The bell of Harrow"], "answer_start": [0]},
        {"text": [], "answer_start": []},
    ]
    assert not reasons


# ------------------------------------------------------------------------------------------------------ bad files
GOOD = {
    "id": "q1",
    "title": "T",
    "context": "Nella Brisk sailed in 1810.",
    "question": "Who sailed?",
    "answers": {"text": ["Nella Brisk"], "answer_start": [0]},
}
LAST = {**GOOD, "id": "q3"}


def _jsonl(*records) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in records) + b"\n"


def _nested_with(bad_qa: dict) -> bytes:
    good = {"id": "q1", "question": "Who sailed?", "answers": [{"text": "Nella Brisk", "answer_start": 0}]}
    return json.dumps(
        {
            "data": [
                {
                    "title": "T",
                    "paragraphs": [{"context": GOOD["context"], "qas": [good, bad_qa, {**good, "id": "q3"}]}],
                }
            ]
        }
    ).encode()


# (file name, content, error the strict load must raise, skip reason with strict=false or None = always raises)
BAD_FILES = [
    (
        "broken.json",
        b'{"data": [{"title": "T", "paragraphs": [',
        r"broken\.json: not valid JSON \(.*line 1 column",
        None,
    ),
    (
        "badline.jsonl",
        _jsonl(GOOD, b'{"id": "q2", "context": "x", ', LAST),
        r"badline\.jsonl: line 2: malformed JSON \(",
        "malformed_json",
    ),
    (
        "missing.jsonl",
        _jsonl(GOOD, {k: v for k, v in {**GOOD, "id": "q2"}.items() if k != "question"}, LAST),
        r"missing\.jsonl: line 2 \(id 'q2'\): missing field 'question'",
        "missing_field",
    ),
    (
        "offset.json",
        _nested_with({"id": "q2", "question": "When?", "answers": [{"text": "1810", "answer_start": 5}]}),
        r"offset\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id 'q2'\): answer 0 answer_start=5 does not point at "
        r"the answer text: context\[5:9\]=' Bri' != '1810'",
        "answer_mismatch",
    ),
    (
        "nocontext.json",
        json.dumps([GOOD, {**GOOD, "id": "q2", "context": "  "}, LAST]).encode(),
        r"nocontext\.json: record 1 \(id 'q2'\): empty context",
        "empty_context",
    ),
    (
        "noquestion.jsonl",
        _jsonl(GOOD, {**GOOD, "id": "q2", "question": ""}, LAST),
        r"noquestion\.jsonl: line 2 \(id 'q2'\): empty question",
        "empty_question",
    ),
    (
        "bytes.jsonl",
        _jsonl(GOOD, b'{"id": "q2", "context": "caf\xe9", "question": "x"}', LAST),
        r"bytes\.jsonl: line 2: undecodable bytes \(not UTF-8\)",
        "undecodable",
    ),
    (
        "latin1.json",
        json.dumps([GOOD]).encode().replace(b"sailed", b"sa\xefled"),
        r"latin1\.json: undecodable bytes \(not UTF-8\) at byte 54 \(line 1\)",
        None,
    ),
    ("dupe.jsonl", _jsonl(GOOD, GOOD, LAST), r"dupe\.jsonl: line 2 \(id 'q1'\): duplicate id 'q1'", "duplicate_id"),
    # a lone UTF-16 surrogate escape: valid JSON, not valid Unicode (Arrow cannot store it), in every layout and field
    (
        "surrogate_nested.json",
        json.dumps(
            {
                "data": [
                    {
                        "title": "T",
                        "paragraphs": [
                            {
                                "context": GOOD["context"],
                                "qas": [
                                    {"id": "q1", "question": "Who?", "answers": [{"text": "Nella", "answer_start": 0}]}
                                ],
                            },
                            {
                                "context": "Ship \ud83d Nella",
                                "qas": [
                                    {"id": "q2", "question": "Who?", "answers": [{"text": "Nella", "answer_start": 7}]}
                                ],
                            },
                            {
                                "context": GOOD["context"],
                                "qas": [
                                    {"id": "q3", "question": "Who?", "answers": [{"text": "Nella", "answer_start": 0}]}
                                ],
                            },
                        ],
                    }
                ]
            }
        ).encode(),
        r"surrogate_nested\.json: data\[0\]\.paragraphs\[1\]\.qas\[0\] \(id 'q2'\): field 'context' holds a lone "
        r"UTF-16 surrogate '\\ud83d' at character 5",
        "invalid_unicode",
    ),
    (
        "surrogate.jsonl",
        _jsonl(GOOD, {**GOOD, "id": "q2", "question": "Who \ud83d sailed?"}, LAST),
        r"surrogate\.jsonl: line 2 \(id 'q2'\): field 'question' holds a lone UTF-16 surrogate '\\ud83d' at "
        r"character 4",
        "invalid_unicode",
    ),
    (
        "surrogate_answer.json",
        json.dumps(
            [
                GOOD,
                {
                    **GOOD,
                    "id": "q2",
                    "context": "Nella \udc00 sailed.",
                    "answers": {"text": ["\udc00"], "answer_start": [6]},
                },
                LAST,
            ]
        ).encode(),
        r"surrogate_answer\.json: record 1 \(id 'q2'\): field 'context' holds a lone UTF-16 surrogate",
        "invalid_unicode",
    ),
    (
        "surrogate_id.jsonl",
        _jsonl(GOOD, {**GOOD, "id": "q\ud800"}, LAST),
        r"surrogate_id\.jsonl: line 2 \(id 'q\\ud800'\): field 'id' holds a lone UTF-16 surrogate",
        "invalid_unicode",
    ),
    (
        "impossible_text.jsonl",
        _jsonl(GOOD, {**GOOD, "id": "q2", "is_impossible": "yes"}, LAST),
        r"impossible_text\.jsonl: line 2 \(id 'q2'\): field 'is_impossible' must be true or false, got 'yes'",
        "wrong_type",
    ),
]


@pytest.mark.parametrize("name, content, error, reason", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_strict_raises_one_line_naming_file_record_and_problem(tmp_path, name, content, error, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_examples(files_cfg(path).data)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message
    assert re.search(error, message), message


@pytest.mark.parametrize("name, content, error, reason", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_file_lenient_skips_counts_and_warns(tmp_path, caplog, name, content, error, reason):
    path = tmp_path / name
    path.write_bytes(content)
    cfg = files_cfg(path, SAMPLE_DEV, "data.strict=false")
    if reason is None:  # whole-file problems raise even with strict=false
        with pytest.raises(DataError, match=error):
            load_examples(cfg.data)
        return
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        train, dev, stats = load_examples(cfg.data)
    assert train["id"] == ["q1", "q3"]
    assert stats["skipped_records"] == {"train": 1, "dev": 0}
    assert stats["skip_reasons"] == {reason: 1}
    warnings = [r.getMessage() for r in caplog.records if r.name == "experiments.data"]
    assert any(re.search(error, w) for w in warnings), warnings
    assert any("skipped 1 malformed record" in w and name in w for w in warnings), warnings


def test_whole_file_problems(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    with pytest.raises(DataError, match=r"empty\.json: the file is empty"):
        read_squad_file(empty, strict=False)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match=r"odd\.json: not a SQuAD-format file"):
        read_squad_file(odd)


# -------------------------------------------------------------------------------------------------------- hub sets
def test_hub_offline_fails_fast_and_names_the_local_file_keys(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # whatever the environment says: never download
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = load_config([], ["data.source=hub", "data.hub_path=sam-accum-tests/no-such-qa-set"])
    began = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_examples(cfg.data)
    assert time.perf_counter() - began < 10
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "data.hub_path='sam-accum-tests/no-such-qa-set' could not be loaded (offline or not found"
    )
    assert "data.source=files data.train_file=... data.validation_file=..." in message


def test_hub_records_are_mapped_and_checked(monkeypatch):
    """A KLUE-MRC-shaped split (id in `guid`, is_impossible, extra columns) through the hub path, without network."""
    import datasets

    context = "Hanul Bae opened the tea house in Seomun."
    rows = {
        "guid": ["klue-1", "klue-2", "klue-3"],
        "title": ["Tea", "Tea", "Tea"],
        "context": [context] * 3,
        "news_category": ["life"] * 3,
        "question": ["Who opened the tea house?", "When did it close?", "Where?"],
        "answers": [
            {"text": ["Hanul Bae"], "answer_start": [0]},
            {"text": [], "answer_start": []},
            {"text": ["Seomun"], "answer_start": [3]},
        ],
        "is_impossible": [False, True, False],
    }
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # skip the reachability probe
    cfg = load_config(["configs/data/klue_mrc.yaml"])
    with pytest.raises(DataError, match=r"hub klue/mrc split train: record 2 \(id 'klue-3'\): answer 0 answer_start=3"):
        load_examples(cfg.data)
    train, dev, stats = load_examples(load_config(["configs/data/klue_mrc.yaml"], ["data.strict=false"]).data)
    assert calls[-2:] == [("klue", "mrc", "train"), ("klue", "mrc", "validation")]
    assert train.column_names == ["id", "title", "context", "question", "answers"]
    assert train["id"] == ["klue-1", "klue-2"]
    assert train["answers"][1] == {"text": [], "answer_start": []}
    assert stats["skipped_records"] == {"train": 1, "dev": 1} and stats["skip_reasons"] == {"answer_mismatch": 2}


# ---------------------------------------------------------------------------------------------------- generated set
def test_generated_set_is_deterministic_and_keyed_by_its_settings(tmp_path):
    small = ["data.generated.n_train=40", "data.generated.n_dev=20"]
    a = ensure_generated(generated_cfg(tmp_path / "a", *small).data.generated)
    b = ensure_generated(generated_cfg(tmp_path / "b", *small).data.generated)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.name for p in a] == ["train.jsonl", "dev.jsonl"]
    other = ensure_generated(generated_cfg(tmp_path / "a", *small, "data.generated.seed=99").data.generated)
    assert other[0].parent != a[0].parent and other[0].read_bytes() != a[0].read_bytes()
    stamp = a[0].stat().st_mtime_ns
    assert ensure_generated(generated_cfg(tmp_path / "a", *small).data.generated) == a  # cache hit: not rewritten
    assert a[0].stat().st_mtime_ns == stamp
    assert not [p for p in a[0].parent.iterdir() if ".tmp" in p.name]


def test_generated_examples_load_through_the_file_loader(tmp_path):
    cfg = generated_cfg(tmp_path, "data.generated.n_train=30", "data.generated.n_dev=12")
    train, dev, stats = load_examples(cfg.data)
    assert (len(train), len(dev)) == (30, 12) and stats["skipped_records"] == {"train": 0, "dev": 0}
    for example in train:
        (text,), (start,) = example["answers"]["text"], example["answers"]["answer_start"]
        assert example["context"][start : start + len(text)] == text
        assert 1 <= len(text.split()) <= 4


def test_generated_design_properties():
    settings = generator_settings(load_config().data.generated)  # the default: 960 / 240
    splits = generate_records(settings)
    assert (len(splits.train), len(splits.dev)) == (960, 240)
    # dev entities never occur in train, not even inside a train paragraph
    assert splits.dev_entities and not (splits.dev_entities & splits.train_entities)
    train_words = {w.strip(".,") for r in splits.train for w in r["context"].split()}
    assert not {w for name in splits.dev_entities for w in name.split()} & train_words
    # at least 8 relations, each asked in >= 3 phrasings that all occur in the training data
    assert len(RELATIONS) >= 8 and all(len(r.questions) >= 3 for r in RELATIONS)
    used = {}
    for rid, (relation, phrasing) in splits.relations.items():
        if rid.startswith("gen-train"):
            used.setdefault(relation, set()).add(phrasing)
    assert set(used) == {r.name for r in RELATIONS}
    assert all(len(p) >= 3 for p in used.values()), used
    # several facts with same-type distractors: the answer type of a question occurs >= 2 times in its paragraph
    for record in splits.train[:90]:
        kind = question_type(record["question"])
        assert len(_TYPE_PATTERNS[kind].findall(record["context"])) >= 2, (kind, record["question"])
    words = [len(c.split()) for c in {r["context"] for r in splits.train}]
    assert min(words) >= 40 and max(words) <= 260 and sum(w > 150 for w in words) > 0.15 * len(words)


QUESTION_WORDS = {"When", "What", "Which", "Where", "From", "Under", "Bridge"}


def test_generated_unanswerable_questions_ask_about_absent_entities():
    settings = {
        **generator_settings(load_config().data.generated),
        "n_train": 200,
        "n_dev": 20,
        "unanswerable_frac": 0.3,
    }
    splits = generate_records(settings)
    empty = [r for r in splits.train if not r["answers"]["text"]]
    assert 0.15 * 200 < len(empty) < 0.45 * 200
    for r in empty:
        names = [n for n in re.findall(r"[A-Z][a-z]{3,}", r["question"]) if n not in QUESTION_WORDS]
        assert names and not any(n in r["context"] for n in names), r["question"]


# ----------------------------------------------------------------------------------------------- heuristic baseline
def test_question_types_and_first_span_heuristic():
    assert question_type("What year saw the birth of Tal Vesk?") == "year"
    assert question_type("By whom was the town of Morn established?") == "person"
    assert question_type("How many metres does the Kel Bridge span?") == "length"
    assert question_type("Which town is home to Tal Vesk?") == "place"
    context = "Tal Vesk was born in 1801. Dar Mion was born in 1799."
    assert heuristic_answer("When was Dar Mion born?", context) == "1801"  # the first year: a distractor
    assert heuristic_answer("Who was born in 1801?", context) == "Tal Vesk"


def test_heuristic_baseline_stays_below_50_f1_on_the_default_dev_set(tmp_path):
    _, dev, _ = load_examples(generated_cfg(tmp_path).data)
    scores = heuristic_baseline(dev)
    assert 5.0 < scores["f1"] <= 50.0, scores  # does something, but the set needs reading
    assert scores["exact_match"] <= scores["f1"]


# ------------------------------------------------------------------------------------------ data.id_field everywhere
def _klue_cfg(train: Path, dev: Path, *extra: str):
    return load_config(
        ["configs/data/klue_mrc.yaml"], [f"data.train_file={train}", f"data.validation_file={dev}", *extra]
    )


def test_official_klue_mrc_json_loads_from_local_files_with_its_id_field(tmp_path):
    train = write_json(tmp_path, "klue-mrc-v1.1_train.json", klue_doc(KLUE_TRAIN))
    dev = write_json(tmp_path, "klue-mrc-v1.1_dev.json", klue_doc(KLUE_DEV))
    cfg = _klue_cfg(train, dev)
    assert (cfg.data.source, cfg.data.id_field, cfg.data.metric) == ("files", "guid", "klue")
    train_ex, dev_ex, stats = load_examples(cfg.data)
    assert train_ex["id"] == [guid for _, _, qas in KLUE_TRAIN for guid, *_ in qas]
    # is_impossible questions are unanswerable: plausible_answers are not answers
    assert [a["text"] for a in train_ex["answers"]] == [
        ["박서진"],
        ["《푸른 종》"],
        [],
        ["〈겨울 강〉"],
        ["열두 점"],
        [],
    ]
    context = KLUE_TRAIN[0][1]
    assert train_ex[1]["answers"] == {"text": ["《푸른 종》"], "answer_start": [context.index("《푸른 종》")]}
    assert stats["unanswerable"] == {"train": 2, "dev": 1} and stats["skipped_records"] == {"train": 0, "dev": 0}
    assert dev_ex["id"] == ["klue-mrc-v1_dev_00001", "klue-mrc-v1_dev_00002", "klue-mrc-v1_dev_00003"]


@pytest.mark.parametrize("layout", ["nested", "flat", "jsonl"])
def test_id_field_holds_for_every_layout_and_a_wrong_one_names_the_key(tmp_path, layout):
    nested = klue_doc(KLUE_TRAIN)
    flat = [
        {**qa, "title": article["title"], "context": paragraph["context"]}
        for article in nested["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    for record in flat:  # the flat shape of answers
        record["answers"] = {
            "text": [a["text"] for a in record["answers"]],
            "answer_start": [a["answer_start"] for a in record["answers"]],
        }
    if layout == "nested":
        path = write_json(tmp_path, "train.json", nested)
    elif layout == "flat":
        path = write_json(tmp_path, "train.json", flat)
    else:
        path = tmp_path / "train.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in flat) + "\n", encoding="utf-8")
    records, reasons = read_squad_file(path, id_field="guid")
    assert [r["id"] for r in records] == [guid for _, _, qas in KLUE_TRAIN for guid, *_ in qas] and not reasons
    first = {"nested": r"data\[0\]\.paragraphs\[0\]\.qas\[0\]", "flat": r"record 0", "jsonl": r"line 1"}[layout]
    expected = (
        rf"train\.jsonl?: {first}: missing field 'id' \(the question id, data\.id_field=id\); the record has "
        r"'guid': set data\.id_field=guid"
    )
    with pytest.raises(DataError, match=expected):
        read_squad_file(path)  # the default id field, as a SQuAD config would read it
    with pytest.raises(
        DataError,
        match=r"none of its 6 records is usable \(missing_field=6\); the first: .*"
        r"set data\.id_field=guid",
    ):
        read_squad_file(path, strict=False)


def test_squad_v2_file_in_v1_mode_warns_once_and_counts_unanswerable(tmp_path, caplog):
    path = write_json(tmp_path, "dev-v2.0.json", squad_v2_doc())
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        _, _, stats = load_examples(files_cfg(path, path, "data.version_2_with_negative=false").data)  # chosen
    # SQUAD_V2_QAS: v2-3 and v2-6 have empty answers, in both splits (the same file)
    assert stats["unanswerable"] == {"train": 2, "dev": 2}
    warnings = [r.getMessage() for r in caplog.records if "no answer" in r.getMessage()]
    assert warnings == [
        "data: 2 train / 2 dev questions have no answer but data.version_2_with_negative=false: they "
        "are trained to point at [CLS] and can never be answered right at evaluation; set "
        'data.version_2_with_negative=true to predict "no answer"'
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        load_examples(
            load_config(
                ["configs/data/squad_v2.yaml"], [f"data.train_file={path}", f"data.validation_file={path}"]
            ).data
        )
    assert not [r for r in caplog.records if "no answer" in r.getMessage()]


# ---------------------------------------------------------------------------------- hub: local folders and the cache
def _hub_folder(root: Path, name: str, fmt: str) -> Path:
    """A folder in the hub schema (what `load_dataset(folder)` reads): data/{train,validation}-*.{parquet,jsonl}."""
    from datasets import Dataset

    folder = root / name / "data"
    folder.mkdir(parents=True)
    rows = flat_records()
    for split in ("train", "validation"):
        ds = Dataset.from_list(rows)
        if fmt == "parquet":
            ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
        else:
            ds.to_json(str(folder / f"{split}-00000-of-00001.jsonl"))
    return root / name


@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_hub_path_takes_a_local_folder_in_the_hub_schema(tmp_path, monkeypatch, fmt):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = _hub_folder(tmp_path, "myqa", fmt)
    cfg = load_config([], [f"data.hub_path={folder}"])
    assert cfg.data.source == "hub"
    train, dev, stats = load_examples(cfg.data)
    assert train["id"] == [r["id"] for r in flat_records()] and len(dev) == 4
    used = stats["used"]["train"]
    assert used["kind"] == "hub" and used["local_folder"] == str(folder) and used["rows"] == 4
    assert used["builder"] == fmt and used["splits"] == {"train": 4, "validation": 4}
    assert used["cache_dir"].startswith(str(tmp_path / "cache")) and used["fingerprint"]


def test_offline_hub_name_served_from_the_cache_is_recorded_and_warned(tmp_path, monkeypatch, caplog):
    """The fault of the issue: a local folder once loaded as 'squad' is what `data.hub_path=squad` gets offline."""
    import datasets
    from huggingface_hub import constants

    from experiments.data import describe_data

    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = _hub_folder(tmp_path / "elsewhere", "squad", "parquet")
    load_examples(load_config([], [f"data.hub_path={folder}"]).data)  # cached under the name "squad"
    monkeypatch.chdir(tmp_path)  # no folder called squad here
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        train, _, stats = load_examples(load_config([REPO / "configs" / "data" / "squad.yaml"]).data)
    used = stats["used"]["train"]
    assert train["id"] == [r["id"] for r in flat_records()]  # not SQuAD: the folder's four made-up questions
    assert used["hub_path"] == "squad" and used["local_folder"] is None
    assert used["cache_dir"].startswith(str(cache / "squad")) and used["revision"] is None
    assert any("Using the latest cached version" in note for note in used["library_notes"])
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        w.startswith(
            "data.hub_path='squad' split train was served from the local datasets cache "
            f"{used['cache_dir']} without checking the hub"
        )
        for w in warnings
    ), warnings
    line = describe_data(stats)
    assert line.startswith("data: hub train=squad:train (4 examples; from ") and used["cache_dir"] in line


def test_hub_name_that_is_a_folder_in_the_working_directory_is_named(tmp_path, monkeypatch, caplog):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    _hub_folder(tmp_path, "squad", "json")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="experiments.data"):
        _, _, stats = load_examples(load_config([REPO / "configs" / "data" / "squad.yaml"]).data)
    assert stats["used"]["dev"]["local_folder"] == str(tmp_path / "squad")
    assert f"data.hub_path='squad' is the local folder {tmp_path / 'squad'}" in caplog.text


def test_the_session_uses_private_hugging_face_caches():
    import datasets

    from tests.conftest import HF_TEST_HOME

    assert Path(datasets.config.HF_DATASETS_CACHE) == Path(HF_TEST_HOME) / "datasets"
    assert not Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(Path.home() / ".cache")


def test_heuristic_baseline_is_scored_by_the_configured_metric():
    from datasets import Dataset

    context = "Tal Vesk was born in 1801. Dar Mion was born in 1799."
    dev = Dataset.from_list(
        [
            {
                "id": "q",
                "title": "",
                "context": context,
                "question": "When was Dar Mion born?",
                "answers": {"text": ["1799"], "answer_start": [context.index("1799")]},
            }
        ]
    )
    # the heuristic answers "1801" (the first year). SQuAD: no shared token -> F1 0. KLUE ROUGE-W: the longest
    # common run of "1801" and "1799" is "1" (1 of 4 characters each side) -> 2 * 1/4 * 1/4 / (1/4 + 1/4) = 0.25
    assert heuristic_baseline(dev) == {"exact_match": 0.0, "f1": 0.0}
    assert heuristic_baseline(dev, "klue") == {"exact_match": 0.0, "rouge_w": pytest.approx(25.0)}


# ---------------------------------------------------------------------------------------------------------------------
# issue 21 item 9: an answer_start that misses because of Unicode normalisation says so, with the fix


def test_an_nfd_context_with_nfc_offsets_names_unicode_normalisation(tmp_path):
    import unicodedata

    nfc_context = "바람섬 등대는 1902년에 세워졌다. 첫 등대지기는 최은별이었다."
    answer = "최은별"
    start = nfc_context.index(answer)  # 29 code points in NFC; NFD spells every syllable in 2-3 jamo
    context = unicodedata.normalize("NFD", nfc_context)
    assert len(context) > len(nfc_context) and context[start : start + 3] != answer
    record = {
        "id": "n-1",
        "context": context,
        "question": "첫 등대지기는?",
        "answers": {"text": [answer], "answer_start": [start]},
    }
    path = tmp_path / "nfd.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_squad_file(path, strict=True)
    message = str(info.value)
    assert (
        message.split("; data.strict=false")[0].endswith(
            "; likely cause: Unicode normalisation (the context and the answer are in different forms, NFC/NFD, so "
            "answer_start counts other code points): normalise the file to NFC (unicodedata.normalize('NFC', ...) on "
            "every string) and recompute answer_start"
        )
        and "\n" not in message
    )
    # the fix works: the same record in NFC reads
    record["context"] = nfc_context
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    records, _ = read_squad_file(path, strict=True)
    assert records[0]["answers"] == {"text": [answer], "answer_start": [start]}


def test_a_plain_offset_error_has_no_normalisation_hint(tmp_path):
    record = {
        "id": "p-1",
        "context": "Velmora was founded in 1612.",
        "question": "When?",
        "answers": {"text": ["1612"], "answer_start": [3]},
    }
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError) as info:
        read_squad_file(path, strict=True)
    assert "normalisation" not in str(info.value)
