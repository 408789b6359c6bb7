"""Extractive-QA evaluation: turn start/end logits into answer strings, and score answers against gold texts.

The rules of each official script, chosen by `data.metric` and `data.version_2_with_negative` (`score_predictions`
dispatches; the README lists which data config uses which):

- `squad_scores`: SQuAD v1.1 (`evaluate-v1.1.py`). Answers are normalised (lowercase, ASCII punctuation dropped, the
  words a/an/the dropped, whitespace collapsed); EM is string equality after normalisation, F1 is the harmonic mean of
  precision and recall over the multiset of whitespace tokens. Each example takes the best score over its golds.
- `squad_v2_scores`: SQuAD v2.0 (`evaluate-v2.0.py`). The same normalisation, but golds that normalise to "" are
  dropped first (a question left with none is unanswerable: only "" is right), F1 is 1 when both sides have no
  tokens, and the result is broken down into HasAns_* and NoAns_* (and best_* thresholds when null odds are given).
- `char_f1_scores`: KorQuAD v1.0 (`evaluate-v1.0.py` of KorQuAD), for Korean, where a word-level F1 is too coarse
  (particles are glued to words): its normalisation, EM on the normalised strings, F1 over the multiset of
  characters with whitespace ignored.
- `klue_mrc_scores`: KLUE-MRC (KLUE-baseline `klue_baseline/metrics/utils.py`): its own normalisation, EM, and
  ROUGE-W, the F1 of the longest common consecutive substring of the normalised strings (spaces included).

All report percentages over the ids of `references`. An empty gold list means the question is unanswerable: only a
prediction that normalises to "" scores. A reference id missing from `predictions` is scored as the empty prediction
"" (it does not raise, and it is not skipped): a model that failed to answer should lose the points, not shrink the
denominator (the official scripts skip it, or fail).

`experiments.qa_postprocess.postprocess_predictions` turns the model's logits into the answers scored here.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from difflib import SequenceMatcher
from typing import Any

__all__ = [
    "normalize_answer",
    "exact_match_score",
    "f1_score",
    "squad_scores",
    "normalize_answer_char",
    "char_exact_match_score",
    "char_f1_score",
    "char_f1_scores",
    "squad_v2_scores",
    "normalize_answer_klue",
    "klue_exact_match_score",
    "rouge_w_score",
    "klue_mrc_scores",
    "score_predictions",
]

# ---------------------------------------------------------------------------------------------------------------------
# SQuAD v1.1 (word level)

_ASCII_PUNCT = frozenset(string.punctuation)  # only these 32 characters: "¿", "«", "—", "“" and friends are kept
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _drop_ascii_punct(text: str) -> str:
    return "".join(ch for ch in text if ch not in _ASCII_PUNCT)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop ASCII punctuation, drop whole-word a/an/the, collapse whitespace.

    The order matters and follows the official script: punctuation goes before the articles are matched, so
    "the-end" becomes "theend" (no article left), while "(the) end" becomes "end".
    """
    text = _drop_ascii_punct(s.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _overlap_f1(pred_units: Sequence[str], gold_units: Sequence[str]) -> float:
    """Harmonic mean of precision and recall over multisets; no shared unit (including an empty side) gives 0."""
    shared = sum((Counter(pred_units) & Counter(gold_units)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(pred_units)
    recall = shared / len(gold_units)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of the official v1.1 script: when nothing is shared the score is 0, even if both sides normalise to
    the empty string (gold "The" vs prediction "a" gets EM 1 but F1 0, exactly as the official script reports)."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def _pairs(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]):
    """(id, prediction, golds) over the ids of `references`; a missing prediction is ""."""
    if len(references) == 0:
        raise ValueError("no references to score (the gold answer dict is empty)")
    for qid, golds in references.items():
        if isinstance(golds, str):
            raise TypeError(f"references[{qid!r}] must be a list of answer strings, got a str")
        prediction = predictions.get(qid)
        yield qid, ("" if prediction is None else prediction), golds


def _per_example(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    normalize: Callable[[str], str],
    em_fn: Callable[[str, str], float],
    f1_fn: Callable[[str, str], float],
) -> dict[str, tuple[float, float]]:
    """{id: (EM, F1)} in [0, 1], the best over the golds; an empty gold list scores 1 only for a prediction that
    normalises to nothing ("", "the", "?")."""
    out = {}
    for qid, prediction, golds in _pairs(predictions, references):
        if len(golds) == 0:
            hit = float(normalize(prediction) == "")
            out[qid] = (hit, hit)
        else:
            out[qid] = (max(em_fn(prediction, g) for g in golds), max(f1_fn(prediction, g) for g in golds))
    return out


def _mean_percent(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values)


def _aggregate(predictions, references, normalize, em_fn, f1_fn) -> dict[str, float]:
    scores = _per_example(predictions, references, normalize, em_fn, f1_fn)
    return {
        "exact_match": _mean_percent(s[0] for s in scores.values()),
        "f1": _mean_percent(s[1] for s in scores.values()),
    }


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Official SQuAD v1.1 EM and F1 in percent over the ids of `references`.

    predictions: {id: answer text}; "" means "no answer"; a missing id counts as "". Ids only in predictions are
    ignored. references: {id: [gold answer texts]}; an empty list marks an unanswerable question.
    """
    return _aggregate(predictions, references, normalize_answer, exact_match_score, f1_score)


# ---------------------------------------------------------------------------------------------------------------------
# KorQuAD v1.0 (character level)

# The KorQuAD script turns these into spaces before it drops ASCII punctuation: quotes, angle and double-angle
# brackets, parentheses, and single curly quotes. (Double curly quotes are not in its list, so they stay.)
_KOR_SPACED = frozenset("'\"《》<>〈〉()‘’")


def normalize_answer_char(s: str) -> str:
    """KorQuAD normalisation: the bracket/quote symbols above become spaces, ASCII punctuation is dropped, lowercase,
    whitespace collapsed. No article removal (the data is Korean)."""
    text = "".join(" " if ch in _KOR_SPACED else ch for ch in s)
    text = _drop_ascii_punct(text).lower()
    return " ".join(text.split())


def char_exact_match_score(prediction: str, gold: str) -> float:
    """EM as KorQuAD computes it: the normalised strings, spaces kept (collapsed), must be equal."""
    return float(normalize_answer_char(prediction) == normalize_answer_char(gold))


def char_f1_score(prediction: str, gold: str) -> float:
    """F1 over the multiset of characters of the normalised strings, whitespace removed."""
    pred_chars = list(normalize_answer_char(prediction).replace(" ", ""))
    gold_chars = list(normalize_answer_char(gold).replace(" ", ""))
    return _overlap_f1(pred_chars, gold_chars)


def char_f1_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """KorQuAD-style EM and character F1 in percent; same inputs, outputs and missing/unanswerable rules as
    `squad_scores`."""
    return _aggregate(predictions, references, normalize_answer_char, char_exact_match_score, char_f1_score)


# ---------------------------------------------------------------------------------------------------------------------
# SQuAD v2.0 (word level, unanswerable questions)


def _v2_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def _v2_exact(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def _v2_f1(gold: str, prediction: str) -> float:
    """v2 token F1: when either side has no tokens the score is 1 if both have none, else 0."""
    gold_tokens, pred_tokens = _v2_tokens(gold), _v2_tokens(prediction)
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    return _overlap_f1(pred_tokens, gold_tokens)


def _best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    null_odds: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """The official `find_best_thresh`: start from "every question answered with no answer" (NoAns questions right,
    HasAns wrong), then admit questions in increasing null odds; an admitted HasAns question earns its score, an
    admitted NoAns question with a non-empty prediction loses its point. Returns (best score in %, its threshold)."""
    current = best = float(sum(1 for qid in scores if not has_answer[qid]))
    threshold = 0.0
    for qid in sorted(scores, key=lambda q: null_odds[q]):  # stable: ties keep the references' order
        current += scores[qid] if has_answer[qid] else (-1.0 if predictions.get(qid) else 0.0)
        if current > best:
            best, threshold = current, float(null_odds[qid])
    return 100.0 * best / len(scores), threshold


def squad_v2_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    null_odds: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The official SQuAD v2.0 evaluation (`evaluate-v2.0.py`), with its key names.

    predictions: {id: answer}; "" means "no answer"; a missing id counts as "" (the script would fail).
    references: {id: [gold texts]}; an empty list marks an unanswerable question.
    null_odds: optional {id: null score - best span score} (the script's --na-prob-file; larger = more likely "no
        answer"); when given, best_exact/best_f1 and their thresholds are added.

    Rules, as the script applies them: a question has an answer (HasAns) when its gold list is non-empty; golds that
    normalise to "" ("the", "!") are dropped, and a question left with none is scored against "" alone; EM compares
    normalised strings; F1 is the token F1, except that when either side has no tokens it is 1 if both have none.
    Returns percentages: exact, f1, total, then HasAns_exact/_f1/_total and NoAns_exact/_f1/_total for the groups
    that are present, then best_exact, best_exact_thresh, best_f1, best_f1_thresh (with null_odds). exact and f1 are
    the script's output on the predictions as made (no --na-prob-thresh applied).
    """
    exact, f1, has_answer = {}, {}, {}
    for qid, prediction, golds in _pairs(predictions, references):
        has_answer[qid] = len(golds) > 0
        kept = [g for g in golds if normalize_answer(g)] or [""]
        exact[qid] = max(_v2_exact(g, prediction) for g in kept)
        f1[qid] = max(_v2_f1(g, prediction) for g in kept)
    out: dict[str, float] = {
        "exact": _mean_percent(exact.values()),
        "f1": _mean_percent(f1.values()),
        "total": len(exact),
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [qid for qid in exact if has_answer[qid] is wanted]
        if ids:
            out.update(
                {
                    f"{prefix}_exact": _mean_percent(exact[q] for q in ids),
                    f"{prefix}_f1": _mean_percent(f1[q] for q in ids),
                    f"{prefix}_total": len(ids),
                }
            )
    if null_odds is not None:
        missing = [qid for qid in exact if qid not in null_odds]
        if missing:
            raise KeyError(f"null_odds has no value for {len(missing)} reference id(s), e.g. {missing[0]!r}")
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(predictions, exact, null_odds, has_answer)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1, null_odds, has_answer)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# KLUE-MRC (EM and ROUGE-W)

# KLUE-baseline's normalisation substitutes a space for the pattern  ['"《》<>〈〉]\(\)‘’ : one of those eight
# characters followed by the literal four characters ()‘’ — a character class followed by escaped literals, not a
# class of twelve. So in practice 《》〈〉‘’ are kept (KorQuAD turns each of them into a space), and ' " < > ( ) go
# with the rest of ASCII punctuation. The pattern is kept as it behaves, so scores match the official ones.
_KLUE_SPACED = re.compile("['\"《》<>〈〉]\\(\\)‘’")


def normalize_answer_klue(s: str) -> str:
    """KLUE-MRC normalisation: lowercase, the pattern above → " ", ASCII punctuation dropped, whitespace collapsed.
    No article removal; 《》〈〉‘’“” are kept."""
    text = _KLUE_SPACED.sub(" ", s.lower())
    return " ".join(_drop_ascii_punct(text).split())


def klue_exact_match_score(prediction: str, gold: str) -> float:
    """1.0 when the KLUE-normalised strings are equal (spaces count)."""
    return float(normalize_answer_klue(prediction) == normalize_answer_klue(gold))


def rouge_w_score(prediction: str, gold: str) -> float:
    """KLUE's ROUGE-W of one pair: with L the length of the longest common consecutive substring of the normalised
    strings (characters, spaces included), P = L / len(prediction), R = L / len(gold), score = 2PR / (P + R); 0 when
    nothing is shared; a gold that normalises to "" scores 1 only against a prediction that does too.

    L comes from `difflib.SequenceMatcher.find_longest_match`, as in the official code; for a gold of 200 or more
    characters its autojunk heuristic ignores characters that make up over 1% of the gold, so L can be shorter than
    the true longest common substring there — kept, so that the numbers are KLUE's.
    """
    pred, ref = normalize_answer_klue(prediction), normalize_answer_klue(gold)
    if ref == "":
        return float(pred == "")
    if pred == "":
        return 0.0
    longest = SequenceMatcher(None, pred, ref).find_longest_match(0, len(pred), 0, len(ref)).size
    if longest == 0:
        return 0.0
    precision, recall = longest / len(pred), longest / len(ref)
    return 2 * precision * recall / (precision + recall)


def klue_mrc_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """KLUE-MRC EM and ROUGE-W in percent over the ids of `references` (KLUE-baseline `klue_baseline/metrics`:
    `klue_mrc_em`, `klue_mrc_rouge_w`). Each example takes its best score over the golds; an empty gold list (an
    unanswerable question) is scored against "" alone. Same inputs and missing-id rule as `squad_scores`."""
    scores = _per_example(predictions, references, normalize_answer_klue, klue_exact_match_score, rouge_w_score)
    return {
        "exact_match": _mean_percent(s[0] for s in scores.values()),
        "rouge_w": _mean_percent(s[1] for s in scores.values()),
    }


# ---------------------------------------------------------------------------------------------------------------------
# One entry for the training loop

# data.metric -> (name of the second score, normalisation, EM of a pair, second score of a pair, source of the rules)
_METRICS = {
    "squad": ("f1", normalize_answer, exact_match_score, f1_score, "SQuAD v1.1 evaluate-v1.1.py"),
    "char": ("f1", normalize_answer_char, char_exact_match_score, char_f1_score, "KorQuAD v1.0 evaluate-v1.0.py"),
    "klue": (
        "rouge_w",
        normalize_answer_klue,
        klue_exact_match_score,
        rouge_w_score,
        "KLUE-baseline klue_baseline/metrics (EM, ROUGE-W)",
    ),
}


def metric_keys(metric: str) -> tuple[str, str]:
    """The two headline keys a run with `data.metric=metric` logs: ("dev/em", "dev/f1") or ("dev/em", "dev/rouge_w")."""
    return "dev/em", f"dev/{_METRICS[metric][0]}"


def score_predictions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    metric: str = "squad",
    version_2_with_negative: bool = False,
    null_odds: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Score a run's predictions by the rules of `data.metric`; returns (logged metrics, details for summary.json).

    Logged metrics (percent): dev/em and dev/f1 (squad, char) or dev/rouge_w (klue); with version_2_with_negative
    also dev/has_ans_em, dev/has_ans_<f1|rouge_w>, dev/no_ans_em, dev/no_ans_<f1|rouge_w> for the groups present,
    and for squad with null_odds dev/best_em, dev/best_f1 and their thresholds (dev/best_em_thresh, ...).
    Details: {"rules": the script whose rules apply, "unanswerable": count of empty gold lists, ...} plus the
    official key names (squad v2: exact, f1, total, HasAns_*, NoAns_*, best_*; others: exact_match, <f1|rouge_w>,
    total, and for v2 HasAns_*/NoAns_* with the same suffixes).
    Raises ValueError for an unknown metric or empty references.
    """
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(_METRICS)}")
    second, normalize, em_fn, pair_fn, rules = _METRICS[metric]
    unanswerable = sum(1 for golds in references.values() if len(golds) == 0)
    if metric == "squad" and version_2_with_negative:
        official = squad_v2_scores(predictions, references, null_odds)
        logged = {"dev/em": official["exact"], "dev/f1": official["f1"]}
        for prefix, key in (("HasAns", "has_ans"), ("NoAns", "no_ans")):
            if f"{prefix}_total" in official:
                logged[f"dev/{key}_em"] = official[f"{prefix}_exact"]
                logged[f"dev/{key}_f1"] = official[f"{prefix}_f1"]
        for name in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"):
            if name in official:
                logged["dev/" + name.replace("exact", "em")] = official[name]
        return logged, {"rules": "SQuAD v2.0 evaluate-v2.0.py", "unanswerable": unanswerable, **official}
    per_example = _per_example(predictions, references, normalize, em_fn, pair_fn)
    details: dict[str, Any] = {
        "rules": rules,
        "unanswerable": unanswerable,
        "exact_match": _mean_percent(s[0] for s in per_example.values()),
        second: _mean_percent(s[1] for s in per_example.values()),
        "total": len(per_example),
    }
    logged = {"dev/em": details["exact_match"], f"dev/{second}": details[second]}
    if version_2_with_negative:
        for prefix, key, wanted in (("HasAns", "has_ans", True), ("NoAns", "no_ans", False)):
            ids = [qid for qid in per_example if (len(references[qid]) > 0) is wanted]
            if ids:
                details[f"{prefix}_exact_match"] = logged[f"dev/{key}_em"] = _mean_percent(
                    per_example[q][0] for q in ids
                )
                details[f"{prefix}_{second}"] = logged[f"dev/{key}_{second}"] = _mean_percent(
                    per_example[q][1] for q in ids
                )
                details[f"{prefix}_total"] = len(ids)
    return logged, details
