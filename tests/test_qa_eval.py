"""EM/F1 against values worked out by hand from the official rules, and the n-best span search on made-up logits."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.qa_eval import (
    char_f1_scores,
    normalize_answer,
    normalize_answer_char,
    postprocess_predictions,
    squad_scores,
)


def f1_of(p: float, r: float) -> float:
    """Harmonic mean, written out so each expected value below reads as precision and recall."""
    return 2 * p * r / (p + r)


# ---------------------------------------------------------------------------------------------------------------------
# normalisation


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  a\tcat \n sat  ", "cat sat"),
        ("An apple, the pear and a plum.", "apple pear and plum"),
        ("Theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("the-end", "theend"),  # punctuation goes first, so no article is left to remove
        ("(the) end", "end"),
        ("U.S.A.", "usa"),
        ("«Paris» — “France”", "«paris» — “france”"),  # non-ASCII punctuation stays (official rule)
        ("", ""),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


# ---------------------------------------------------------------------------------------------------------------------
# squad_scores on one example: (prediction, golds, expected EM in [0, 1], expected F1 in [0, 1])

SQUAD_CASES = {
    "identical": ("Denver Broncos", ["Denver Broncos"], 1, 1),
    "case, punctuation and article": ("the Denver Broncos!", ["denver broncos"], 1, 1),
    "whitespace": ("  Denver\n\tBroncos ", ["Denver Broncos"], 1, 1),
    "dots inside a word": ("U.S.", ["US"], 1, 1),
    "article inside a word is kept": ("anthem", ["them"], 0, 0),
    # pred {big, dog}, gold {dog, house, roof}: one shared token
    "partial overlap p=1/2 r=1/3": ("big dog", ["dog house roof"], 0, f1_of(1 / 2, 1 / 3)),
    # the article disappears from the prediction: pred {cat, sat}, gold {cat, sat, on, mat}
    "partial overlap p=1 r=1/2": ("the cat sat", ["cat sat on mat"], 0, f1_of(1, 1 / 2)),
    # multiset: three "go" against one "go" share one token
    "repeated tokens p=1/3 r=1": ("go go go", ["go"], 0, f1_of(1 / 3, 1)),
    "multiple golds: exact one wins": ("big dog", ["dog house roof", "The big dog."], 1, 1),
    # against "a big cat" -> {big, cat}: p=1/2, r=1/2 beats the p=1/2, r=1/3 of the first gold
    "multiple golds: max F1": ("big dog", ["dog house roof", "a big cat"], 0, f1_of(1 / 2, 1 / 2)),
    "empty prediction, answerable": ("", ["Denver"], 0, 0),
    "unanswerable, empty prediction": ("", [], 1, 1),
    "unanswerable, an answer given": ("Denver", [], 0, 0),
    "unanswerable, prediction normalises to nothing": ("The.", [], 1, 1),
    # the v1.1 script: equal after normalisation (both empty) but no shared token -> F1 0
    "gold normalises to nothing": ("a", ["The"], 1, 0),
    "unicode guillemets are not punctuation": ("«Paris»", ["Paris"], 0, 0),
    # tokens {“paris”, france} vs {paris, france}: only "france" is shared
    "unicode quotes stay glued to the word": ("“Paris” France", ["Paris France"], 0, f1_of(1 / 2, 1 / 2)),
    "em dash is not a separator": ("Paris—France", ["Paris France"], 0, 0),
}


@pytest.mark.parametrize("prediction, golds, em, f1", SQUAD_CASES.values(), ids=SQUAD_CASES.keys())
def test_squad_scores_single_example(prediction, golds, em, f1):
    scores = squad_scores({"q": prediction}, {"q": golds})
    assert set(scores) == {"exact_match", "f1"}
    assert scores["exact_match"] == pytest.approx(100 * em)
    assert scores["f1"] == pytest.approx(100 * f1)


def test_squad_scores_averages_over_reference_ids():
    predictions = {"a": "Denver Broncos", "b": "big dog", "extra": "ignored: not in the references"}
    references = {"a": ["Denver Broncos"], "b": ["dog house roof"], "c": ["Carolina"]}  # "c" has no prediction
    scores = squad_scores(predictions, references)
    assert scores["exact_match"] == pytest.approx(100 * (1 + 0 + 0) / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + f1_of(1 / 2, 1 / 3) + 0) / 3)


@pytest.mark.parametrize("golds, expected", [(["Denver"], 0.0), ([], 100.0)])
def test_missing_prediction_counts_as_empty_answer(golds, expected):
    assert squad_scores({}, {"q": golds}) == {"exact_match": expected, "f1": expected}


def test_squad_scores_rejects_empty_references_and_bare_strings():
    with pytest.raises(ValueError):
        squad_scores({"q": "x"}, {})
    with pytest.raises(TypeError):
        squad_scores({"q": "x"}, {"q": "x"})  # a str gold would be scored letter by letter


# ---------------------------------------------------------------------------------------------------------------------
# KorQuAD character F1

CHAR_CASES = {
    "identical": ("세종대왕", ["세종대왕"], 1, 1),
    # F1 ignores spacing; EM (as in the KorQuAD script) keeps the collapsed spaces
    "spacing differs": ("세종 대왕", ["세종대왕"], 0, 1),
    "double angle brackets dropped": ("《훈민정음》", ["훈민정음"], 1, 1),
    "ASCII punctuation inside a number": ("1,000원", ["1000원"], 1, 1),
    "lowercase": ("KBS뉴스", ["kbs뉴스"], 1, 1),
    # 서울특별시 has 5 characters, 2 of them shared with 서울
    "prediction too long p=2/5 r=1": ("서울특별시", ["서울"], 0, f1_of(2 / 5, 1)),
    "prediction too short p=1 r=2/5": ("서울", ["서울특별시"], 0, f1_of(1, 2 / 5)),
    # multiset: 하 x3 against 하 x1
    "repeated characters p=1/3 r=1": ("하하하", ["하"], 0, f1_of(1 / 3, 1)),
    # order does not matter, only counts: {가,나,다} inside {다,나,가,라}
    "character bag p=1 r=3/4": ("가나다", ["다나가라"], 0, f1_of(1, 3 / 4)),
    "max over golds": ("이순신 장군", ["이순신", "이순신 장군"], 1, 1),
    "no shared character": ("부산", ["서울"], 0, 0),
    "unanswerable, empty prediction": ("", [], 1, 1),
    "unanswerable, an answer given": ("서울", [], 0, 0),
}


@pytest.mark.parametrize("prediction, golds, em, f1", CHAR_CASES.values(), ids=CHAR_CASES.keys())
def test_char_f1_scores_single_example(prediction, golds, em, f1):
    scores = char_f1_scores({"q": prediction}, {"q": golds})
    assert set(scores) == {"exact_match", "f1"}
    assert scores["exact_match"] == pytest.approx(100 * em)
    assert scores["f1"] == pytest.approx(100 * f1)


def test_char_normalisation_keeps_articles_and_spaces():
    assert normalize_answer_char("The  〈서울〉 (시)") == "the 서울 시"


def test_char_f1_missing_prediction():
    assert char_f1_scores({}, {"q": ["서울"], "r": []}) == {"exact_match": 50.0, "f1": 50.0}


# ---------------------------------------------------------------------------------------------------------------------
# postprocess_predictions on hand-made features
#
# context: "alpha beta gamma delta epsilon"
#           0     6    11    17    23     (character offsets)
CONTEXT = "alpha beta gamma delta epsilon"
SPAN = {"alpha": [0, 5], "beta": [6, 10], "gamma": [11, 16], "delta": [17, 22], "epsilon": [23, 30]}
LOW = -10.0


def window(*words):
    """Offsets of one feature: [CLS] question [SEP] words... [SEP]; the question and special tokens have None."""
    return [None, None, None] + [SPAN[w] for w in words] + [None]


def logits_for(length, start=None, end=None):
    """A pair of logit rows filled with LOW, with {position: value} overrides."""
    s = np.full(length, LOW)
    e = np.full(length, LOW)
    for pos, value in (start or {}).items():
        s[pos] = value
    for pos, value in (end or {}).items():
        e[pos] = value
    return s, e


def stack(rows):
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def two_windows():
    """Example "e1" as two overlapping windows (gamma is in both) plus another example "e0" in between."""
    features = [
        {"example_id": "e1", "offset_mapping": window("alpha", "beta", "gamma")},
        {"example_id": "e0", "offset_mapping": window("alpha", "beta", "gamma")},
        {"example_id": "e1", "offset_mapping": window("gamma", "delta", "epsilon")},
    ]
    examples = [{"id": "e0", "context": CONTEXT}, {"id": "e1", "context": CONTEXT}]
    return examples, features


def test_best_span_across_overlapping_features():
    examples, features = two_windows()
    rows = [
        # e1, window 1: beta..gamma scores 3 + 3 = 6; the question token (position 1) is far higher but not context
        logits_for(7, start={1: 50.0, 4: 3.0}, end={1: 50.0, 5: 3.0}),
        # e0: alpha alone, 2 + 2
        logits_for(7, start={3: 2.0}, end={3: 2.0}),
        # e1, window 2: delta..epsilon scores 4 + 4 = 8 and wins over window 1
        logits_for(7, start={4: 4.0}, end={5: 4.0}),
    ]
    start, end = stack(rows)
    predictions = postprocess_predictions(examples, features, start, end)
    assert predictions == {"e0": "alpha", "e1": "delta epsilon"}


def test_question_tokens_never_form_a_span():
    examples, features = two_windows()
    rows = [logits_for(7, start={0: 99.0, 1: 99.0, 2: 99.0, 6: 99.0}, end={0: 99.0, 1: 99.0, 2: 99.0, 6: 99.0})]
    rows += [logits_for(7, start={5: 1.0}, end={5: 1.0})] * 2
    start, end = stack(rows)
    predictions = postprocess_predictions(examples, features, start, end)
    # in e1's first window every context token is LOW, so the span comes from the second window (epsilon, 1 + 1)
    assert predictions["e1"] == "epsilon"
    assert predictions["e0"] == "gamma"


def test_end_before_start_is_rejected():
    examples = [{"id": "x", "context": CONTEXT}]
    features = [{"example_id": "x", "offset_mapping": window("alpha", "beta", "gamma", "delta")}]
    # the best start (delta, 9) lies after the best end (alpha, 9); the valid pairs are worth less
    s, e = logits_for(8, start={6: 9.0, 4: 1.0}, end={3: 9.0, 5: 2.0})
    predictions = postprocess_predictions(examples, features, s[None], e[None])
    # start delta has no good end after it (9 + LOW); start beta + end gamma = 1 + 2 = 3 is the best valid pair
    assert predictions == {"x": "beta gamma"}


def test_n_best_size_limits_the_pairs_considered():
    examples = [{"id": "x", "context": CONTEXT}]
    features = [{"example_id": "x", "offset_mapping": window("alpha", "beta", "gamma", "delta")}]
    s, e = logits_for(8, start={6: 9.0, 4: 1.0}, end={3: 9.0, 5: 2.0})
    # with only the top start (delta) and the top end (alpha) there is no valid pair at all
    assert postprocess_predictions(examples, features, s[None], e[None], n_best_size=1) == {"x": ""}


@pytest.mark.parametrize("max_len, expected", [(3, "alpha beta gamma"), (2, "beta gamma"), (1, "alpha")])
def test_max_answer_length_in_tokens(max_len, expected):
    examples = [{"id": "x", "context": CONTEXT}]
    features = [{"example_id": "x", "offset_mapping": window("alpha", "beta", "gamma")}]
    # alpha..gamma (3 tokens) = 5 + 5 = 10, beta..gamma (2 tokens) = 4 + 5 = 9, alpha..alpha (1 token) = 5 + 3 = 8;
    # every other pair scores less (alpha..beta 4, beta..beta 3, gamma..gamma -5)
    s, e = logits_for(7, start={3: 5.0, 4: 4.0}, end={5: 5.0, 3: 3.0, 4: -1.0})
    got = postprocess_predictions(examples, features, s[None], e[None], max_answer_length=max_len)
    assert got == {"x": expected}


def v2_case():
    """One example in two windows: best span beta (3 + 3 = 6); CLS scores 4 + 4 = 8 and 1 + 1 = 2."""
    examples = [{"id": "x", "context": CONTEXT}]
    features = [
        {"example_id": "x", "offset_mapping": window("alpha", "beta")},
        {"example_id": "x", "offset_mapping": window("gamma", "delta")},
    ]
    return examples, features


def test_v2_null_score_is_the_minimum_over_features():
    examples, features = v2_case()
    rows = [logits_for(6, start={0: 4.0, 4: 3.0}, end={0: 4.0, 4: 3.0}), logits_for(6, start={0: 1.0}, end={0: 1.0})]
    start, end = stack(rows)
    # null = min(8, 2) = 2 < 6: the span wins
    assert postprocess_predictions(examples, features, start, end, version_2_with_negative=True) == {"x": "beta"}


@pytest.mark.parametrize("threshold, expected", [(0.0, ""), (1.0, ""), (2.0, "beta"), (-2.5, "")])
def test_v2_threshold_both_ways(threshold, expected):
    examples, features = v2_case()
    # both windows have CLS 4 + 4 = 8; best span 6: "" exactly when 8 > 6 + threshold, i.e. threshold < 2
    rows = [logits_for(6, start={0: 4.0, 4: 3.0}, end={0: 4.0, 4: 3.0}), logits_for(6, start={0: 4.0}, end={0: 4.0})]
    start, end = stack(rows)
    got = postprocess_predictions(
        examples, features, start, end, version_2_with_negative=True, null_score_diff_threshold=threshold
    )
    assert got == {"x": expected}


def test_v1_ignores_the_null_score():
    examples, features = v2_case()
    rows = [
        logits_for(6, start={0: 40.0, 4: 3.0}, end={0: 40.0, 4: 3.0}),
        logits_for(6, start={0: 40.0}, end={0: 40.0}),
    ]
    start, end = stack(rows)
    assert postprocess_predictions(examples, features, start, end) == {"x": "beta"}


def test_example_without_a_valid_span_or_features_gets_empty_answer():
    examples = [{"id": "x", "context": CONTEXT}, {"id": "orphan", "context": CONTEXT}]
    features = [{"example_id": "x", "offset_mapping": [None] * 5}]
    s, e = logits_for(5, start={0: 1.0}, end={0: 1.0})
    for v2 in (False, True):
        assert postprocess_predictions(examples, features, s[None], e[None], version_2_with_negative=v2) == {
            "x": "",
            "orphan": "",
        }


def test_accepts_datasets_and_shorter_offsets_than_logits():
    datasets = pytest.importorskip("datasets")
    examples, features = two_windows()
    rows = [
        logits_for(9, start={4: 3.0}, end={5: 3.0}),  # logits padded to 9, offsets have 7 entries
        logits_for(9, start={3: 2.0}, end={3: 2.0}),
        logits_for(9, start={4: 4.0, 8: 100.0}, end={5: 4.0, 8: 100.0}),  # position 8 has no offset: ignored
    ]
    start, end = stack(rows)
    got = postprocess_predictions(
        datasets.Dataset.from_list(examples), datasets.Dataset.from_list(features), start, end
    )
    assert got == {"e0": "alpha", "e1": "delta epsilon"}


def test_rejects_logits_that_do_not_match_the_features():
    examples, features = two_windows()
    start, end = stack([logits_for(7)] * 2)
    with pytest.raises(ValueError):
        postprocess_predictions(examples, features, start, end)
