"""EM/F1 against values worked out by hand from the official rules, and the n-best span search on made-up logits."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.qa_eval import (
    char_f1_scores,
    klue_mrc_scores,
    normalize_answer,
    normalize_answer_char,
    normalize_answer_klue,
    score_predictions,
    squad_scores,
    squad_v2_scores,
)
from experiments.qa_postprocess import postprocess_predictions


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
# KLUE-MRC: EM and ROUGE-W (KLUE-baseline klue_baseline/metrics/utils.py)
#
# Rules written out: normalise both strings (lowercase; the five-character sequence
# <one of '"《》<>〈〉> + "()‘’" becomes a space; ASCII punctuation dropped; whitespace collapsed — so 《》〈〉‘’
# stay, spaces stay). EM: the normalised strings are equal. ROUGE-W: L = length of the longest common run of
# consecutive characters (spaces count), P = L/len(pred), R = L/len(gold), score = 2PR/(P+R), 0 when L = 0. A gold
# that normalises to "" (or an empty gold list) scores 1 only against a prediction that normalises to "". The best
# over the golds counts.


def rouge_w_of(longest: int, len_pred: int, len_gold: int) -> float:
    p, r = longest / len_pred, longest / len_gold
    return 2 * p * r / (p + r)


KLUE_CASES = {
    "identical": ("세종대왕", ["세종대왕"], 1, 1),
    # the same characters in another order: KorQuAD's bag of characters gives 100, KLUE's consecutive run does not.
    # "ab cd" vs "cd ab": the longest common run is "ab" (2 of 5 characters each side)
    "order matters (KorQuAD char F1 would be 100)": ("ab cd", ["cd ab"], 0, rouge_w_of(2, 5, 5)),
    # "에디션 25주년" (8 characters) vs "25주년 에디션" (8): the longest run is "25주년" (4)
    "Korean words swapped": ("에디션 25주년", ["25주년 에디션"], 0, rouge_w_of(4, 8, 8)),
    # "뉴740li25주년에디션" (13 characters) against the shorter gold "뉴740li" (6): the run is the whole gold
    "prediction runs past a shorter gold": ("뉴740Li25주년에디션", ["뉴740Li"], 0, rouge_w_of(6, 13, 6)),
    # spaces are characters: "세종 대왕" (5) vs "세종대왕" (4), longest run "세종" (2)
    "a space breaks the run": ("세종 대왕", ["세종대왕"], 0, rouge_w_of(2, 5, 4)),
    # KLUE keeps 《》 (KorQuAD makes them spaces): "《훈민정음》" (6) vs "훈민정음" (4), run 4
    "double angle brackets are kept": ("《훈민정음》", ["훈민정음"], 0, rouge_w_of(4, 6, 4)),
    "angle brackets are kept": ("〈서울〉", ["서울"], 0, rouge_w_of(2, 4, 2)),
    "single curly quotes are kept": ("‘가나’", ["가나"], 0, rouge_w_of(2, 4, 2)),
    "ASCII parentheses are punctuation": ("(서울)", ["서울"], 1, 1),
    "ASCII double quotes are punctuation": ('"서울"', ["서울"], 1, 1),
    # the only sequence KLUE's pattern matches: 《 then ()‘’ -> one space -> " 서울" -> "서울"
    "the five-character sequence becomes a space": ("《()‘’서울", ["서울"], 1, 1),
    "lowercase": ("KBS뉴스", ["kbs뉴스"], 1, 1),
    # a particle glued to the answer: "서울에서" (4) vs "서울" (2), run 2
    "particle on the prediction": ("서울에서", ["서울"], 0, rouge_w_of(2, 4, 2)),
    "particle on the gold": ("서울", ["서울에서"], 0, rouge_w_of(2, 2, 4)),
    # no article removal: "the city" (8) vs "city" (4)
    "articles are kept": ("the city", ["city"], 0, rouge_w_of(4, 8, 4)),
    # "가나다라" (4) vs "가나마다라" (5): two runs of 2, not 4 shared characters
    "longest run, not total overlap": ("가나다라", ["가나마다라"], 0, rouge_w_of(2, 4, 5)),
    "repeated characters": ("하하하", ["하"], 0, rouge_w_of(1, 3, 1)),
    # "이순신 장군님" (7): vs "이순신" run 3 -> 0.6; vs "장군" run 2 -> 4/9; the best counts
    "max over golds": ("이순신 장군님", ["이순신", "장군"], 0, max(rouge_w_of(3, 7, 3), rouge_w_of(2, 7, 2))),
    "exact gold among several": ("이순신 장군", ["이순신", "이순신 장군"], 1, 1),
    "whitespace collapsed": ("  세종\t대왕 ", ["세종 대왕"], 1, 1),
    "no shared character": ("부산", ["서울"], 0, 0),
    "empty prediction, answerable": ("", ["서울"], 0, 0),
    "unanswerable, empty prediction": ("", [], 1, 1),
    "unanswerable, an answer given": ("서울", [], 0, 0),
    "gold that normalises to nothing, empty prediction": ("", ["()"], 1, 1),
    "gold that normalises to nothing, an answer given": ("서울", ["()"], 0, 0),
}


@pytest.mark.parametrize("prediction, golds, em, rouge_w", KLUE_CASES.values(), ids=KLUE_CASES.keys())
def test_klue_mrc_scores_single_example(prediction, golds, em, rouge_w):
    scores = klue_mrc_scores({"q": prediction}, {"q": golds})
    assert set(scores) == {"exact_match", "rouge_w"}
    assert scores["exact_match"] == pytest.approx(100 * em)
    assert scores["rouge_w"] == pytest.approx(100 * rouge_w)


def test_klue_differs_from_korquad_where_the_issue_says():
    # the same pair: KorQuAD's character bag is complete, KLUE's consecutive run is 4 of 8
    assert char_f1_scores({"q": "에디션 25주년"}, {"q": ["25주년 에디션"]})["f1"] == pytest.approx(100.0)
    assert klue_mrc_scores({"q": "에디션 25주년"}, {"q": ["25주년 에디션"]})["rouge_w"] == pytest.approx(50.0)
    assert normalize_answer_klue("《훈민정음》 (세종) ‘A’") == "《훈민정음》 세종 ‘a’"
    assert normalize_answer_char("《훈민정음》 (세종) ‘A’") == "훈민정음 세종 a"


def test_klue_missing_prediction_and_mean():
    # q1 exact (1, 1); q2 missing -> "" against an answer (0, 0); q3 unanswerable and missing -> (1, 1)
    scores = klue_mrc_scores({"q1": "서울"}, {"q1": ["서울"], "q2": ["부산"], "q3": []})
    assert scores == {"exact_match": pytest.approx(200 / 3), "rouge_w": pytest.approx(200 / 3)}


# ---------------------------------------------------------------------------------------------------------------------
# SQuAD v2.0 (evaluate-v2.0.py)
#
# Rules written out: a question has an answer (HasAns) when its gold list is non-empty. Golds that normalise to ""
# are dropped; if none is left the only gold is "". EM: normalised strings equal. F1: token F1 of the normalised
# strings, except that when either side has no tokens it is 1 if both have none, else 0. Best over the golds.

V2_CASES = {
    "identical": ("Denver Broncos", ["Denver Broncos"], 1, 1),
    # "the" normalises to "" and is dropped, leaving "Denver": "" against it scores 0 (v1.1 would give EM 1)
    "dropped article gold, empty prediction": ("", ["the", "Denver"], 0, 0),
    "dropped article gold, right answer": ("Denver", ["the", "Denver"], 1, 1),
    # "the" has no tokens; the only gold left is "Denver": both scores 0 (v1.1: EM 1 against "the")
    "dropped article gold, article predicted": ("the", ["the", "Denver"], 0, 0),
    # every gold dropped: scored against "" alone, and both sides empty gives F1 1 (v1.1 gives F1 0)
    "only gold normalises to nothing, empty prediction": ("", ["the"], 1, 1),
    "only gold normalises to nothing, article predicted": ("a", ["The"], 1, 1),
    "only gold normalises to nothing, an answer given": ("Denver", ["the"], 0, 0),
    "unanswerable, empty prediction": ("", [], 1, 1),
    "unanswerable, an answer given": ("Denver", [], 0, 0),
    "unanswerable, prediction normalises to nothing": ("the", [], 1, 1),
    "unanswerable, punctuation only": ("?", [], 1, 1),
    # pred {big, dog}, gold {dog, house, roof}: p = 1/2, r = 1/3
    "partial overlap": ("big dog", ["dog house roof"], 0, f1_of(1 / 2, 1 / 3)),
    "article dropped inside the prediction": ("the cat sat", ["cat sat on mat"], 0, f1_of(1, 1 / 2)),
    # "an" dropped; against "a big cat" -> {big, cat}: p = r = 1/2
    "max over the golds that are left": ("big dog", ["an", "a big cat"], 0, f1_of(1 / 2, 1 / 2)),
    "empty prediction, answerable": ("", ["Denver"], 0, 0),
    # "." is dropped (normalises to ""), "Paris" is left; "Paris." normalises to "paris"
    "punctuation-only gold dropped": ("Paris.", [".", "Paris"], 1, 1),
    "unicode guillemets are not punctuation": ("«Paris»", ["Paris"], 0, 0),
    "repeated tokens": ("go go go", ["go"], 0, f1_of(1 / 3, 1)),
}


@pytest.mark.parametrize("prediction, golds, exact, f1", V2_CASES.values(), ids=V2_CASES.keys())
def test_squad_v2_scores_single_example(prediction, golds, exact, f1):
    scores = squad_v2_scores({"q": prediction}, {"q": golds})
    assert scores["exact"] == pytest.approx(100 * exact)
    assert scores["f1"] == pytest.approx(100 * f1)
    group = "HasAns" if golds else "NoAns"
    other = "NoAns" if golds else "HasAns"
    assert scores[f"{group}_total"] == 1 and f"{other}_total" not in scores  # the script omits an empty group
    assert scores[f"{group}_exact"] == pytest.approx(100 * exact)


def test_v1_and_v2_rules_differ_on_golds_that_normalise_to_nothing():
    references = {"q": ["the", "Denver"]}
    assert squad_scores({"q": ""}, references) == {"exact_match": 100.0, "f1": 0.0}  # v1.1: "" == norm("the")
    v2 = squad_v2_scores({"q": ""}, references)
    assert (v2["exact"], v2["f1"]) == (0.0, 0.0)


def thresholds_case():
    # a: HasAns, right (EM 1, F1 1); b: HasAns, "Paris France" vs "Paris" (EM 0, F1 p=1/2 r=1 -> 2/3);
    # c: NoAns, "" (1, 1); d: NoAns, "Rome" (0, 0)
    predictions = {"a": "Denver", "b": "Paris France", "c": "", "d": "Rome"}
    references = {"a": ["Denver"], "b": ["Paris"], "c": [], "d": []}
    null_odds = {"a": -1.0, "b": 1.0, "c": 2.0, "d": -3.0}
    return predictions, references, null_odds


def test_squad_v2_breakdown_and_best_threshold_by_hand():
    predictions, references, null_odds = thresholds_case()
    scores = squad_v2_scores(predictions, references, null_odds)
    f1_b = f1_of(1 / 2, 1)
    assert scores["total"] == 4
    assert scores["exact"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + f1_b + 1 + 0) / 4)
    assert (scores["HasAns_exact"], scores["HasAns_total"]) == (pytest.approx(50.0), 2)
    assert scores["HasAns_f1"] == pytest.approx(100 * (1 + f1_b) / 2)
    assert (scores["NoAns_exact"], scores["NoAns_f1"], scores["NoAns_total"]) == (50.0, 50.0, 2)
    # find_best_thresh: start at 2 (both NoAns right), admit in increasing null odds d, a, b, c:
    #   EM: d (NoAns, answered "Rome") 2-1=1; a +1 = 2 (not > 2); b +0 = 2; c ("" ) +0 = 2 -> best 2/4, threshold 0.0
    #   F1: d -> 1; a -> 2; b + 2/3 -> 2.667 > 2 (threshold 1.0); c -> 2.667 -> best 2.667/4 at 1.0
    assert scores["best_exact"] == pytest.approx(100 * 2 / 4) and scores["best_exact_thresh"] == 0.0
    assert scores["best_f1"] == pytest.approx(100 * (2 + f1_b) / 4) and scores["best_f1_thresh"] == 1.0


def test_score_predictions_names_per_metric():
    predictions, references, null_odds = thresholds_case()
    logged, details = score_predictions(
        predictions, references, metric="squad", version_2_with_negative=True, null_odds=null_odds
    )
    f1_b = f1_of(1 / 2, 1)
    assert logged == pytest.approx(
        {
            "dev/em": 50.0,
            "dev/f1": 100 * (2 + f1_b) / 4,
            "dev/has_ans_em": 50.0,
            "dev/has_ans_f1": 100 * (1 + f1_b) / 2,
            "dev/no_ans_em": 50.0,
            "dev/no_ans_f1": 50.0,
            "dev/best_em": 50.0,
            "dev/best_em_thresh": 0.0,
            "dev/best_f1": 100 * (2 + f1_b) / 4,
            "dev/best_f1_thresh": 1.0,
        }
    )
    assert details["rules"] == "SQuAD v2.0 evaluate-v2.0.py" and details["HasAns_total"] == 2
    assert details["unanswerable"] == 2
    # v1 mode: the v1.1 rules, no breakdown
    logged, details = score_predictions(predictions, references, metric="squad")
    assert set(logged) == {"dev/em", "dev/f1"} and details["rules"] == "SQuAD v1.1 evaluate-v1.1.py"
    # KLUE: dev/rouge_w instead of dev/f1, and the v2 breakdown with the same suffix
    # a: 1/1; b: "paris france" (12) vs "paris" (5), run 5 -> P=5/12 R=1; c: "" (1/1); d: (0/0)
    logged, details = score_predictions(predictions, references, metric="klue", version_2_with_negative=True)
    rw_b = 2 * (5 / 12) / (5 / 12 + 1)
    assert logged == pytest.approx(
        {
            "dev/em": 50.0,
            "dev/rouge_w": 100 * (2 + rw_b) / 4,
            "dev/has_ans_em": 50.0,
            "dev/has_ans_rouge_w": 100 * (1 + rw_b) / 2,
            "dev/no_ans_em": 50.0,
            "dev/no_ans_rouge_w": 50.0,
        }
    )
    assert details["rules"].startswith("KLUE-baseline klue_baseline/metrics")
    with pytest.raises(ValueError, match="unknown metric"):
        score_predictions(predictions, references, metric="bleu")


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


def test_v2_null_odds_are_null_score_minus_best_span():
    examples, features = v2_case()
    rows = [logits_for(6, start={0: 4.0, 4: 3.0}, end={0: 4.0, 4: 3.0}), logits_for(6, start={0: 1.0}, end={0: 1.0})]
    start, end = stack(rows)
    # null = min(8, 2) = 2, best span beta = 6: odds 2 - 6 = -4
    answers, odds = postprocess_predictions(
        examples, features, start, end, version_2_with_negative=True, return_null_odds=True
    )
    assert answers == {"x": "beta"} and odds == {"x": -4.0}


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
