"""Extractive-QA evaluation: turn start/end logits into answer strings, and score answers against gold texts.

Two metrics, chosen by `data.metric`:

- `squad_scores`: the official SQuAD v1.1 rules. Answers are normalised (lowercase, ASCII punctuation dropped, the
  words a/an/the dropped, whitespace collapsed); EM is string equality after normalisation, F1 is the harmonic mean of
  precision and recall over the multiset of whitespace tokens. Each example takes the best score over its gold answers.
- `char_f1_scores`: the KorQuAD v1.0 rules for Korean, where a word-level F1 is too coarse (particles are glued to
  words): the same EM, but F1 over the multiset of characters with whitespace ignored.

Both report percentages over the ids of `references`. An empty gold list means the question is unanswerable
(SQuAD v2 style): the prediction scores 1 on EM and F1 only when it normalises to the empty string, else 0.
A reference id missing from `predictions` is scored as the empty prediction "" (it does not raise, and it is not
skipped): a model that failed to answer should lose the points, not shrink the denominator.

`postprocess_predictions` is the usual n-best search over the features (doc-stride windows) of each example.
"""
from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "normalize_answer",
    "exact_match_score",
    "f1_score",
    "squad_scores",
    "normalize_answer_char",
    "char_exact_match_score",
    "char_f1_score",
    "char_f1_scores",
    "postprocess_predictions",
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


def _aggregate(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    normalize: Callable[[str], str],
    em_fn: Callable[[str, str], float],
    f1_fn: Callable[[str, str], float],
) -> dict[str, float]:
    if len(references) == 0:
        raise ValueError("no references to score (the gold answer dict is empty)")
    em_total = 0.0
    f1_total = 0.0
    for qid, golds in references.items():
        prediction = predictions.get(qid)
        if prediction is None:
            prediction = ""  # a missing answer is the empty answer: it scores only on unanswerable questions
        if isinstance(golds, str):
            raise TypeError(f"references[{qid!r}] must be a list of answer strings, got a str")
        if len(golds) == 0:
            # Unanswerable: the right output is "no answer". As in the official v2 script, a prediction that
            # normalises to nothing ("", "the", "?") counts as "no answer".
            hit = float(normalize(prediction) == "")
            em_total += hit
            f1_total += hit
            continue
        em_total += max(em_fn(prediction, gold) for gold in golds)
        f1_total += max(f1_fn(prediction, gold) for gold in golds)
    n = len(references)
    return {"exact_match": 100.0 * em_total / n, "f1": 100.0 * f1_total / n}


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
# From logits to answer strings


def _column(rows: Any, name: str) -> list:
    """One column of a datasets.Dataset (column access) or of a list of dicts (row access)."""
    if hasattr(rows, "column_names"):
        if name not in rows.column_names:
            raise KeyError(f"dataset has no column {name!r} (columns: {', '.join(rows.column_names)})")
        return list(rows[name])
    return [row[name] for row in rows]


def _top_valid(logits: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest logits among the valid positions, largest first (ties: the earlier position)."""
    candidates = np.flatnonzero(valid)
    if candidates.size == 0:
        return candidates
    order = np.argsort(-logits[candidates], kind="stable")[:n]
    return candidates[order]


def postprocess_predictions(
    examples: Any,
    features: Any,
    start_logits: Any,
    end_logits: Any,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """Pick the answer text of every example from the logits of its features.

    examples: datasets.Dataset or list of dicts with `id` and `context`.
    features: datasets.Dataset or list of dicts with `example_id` and `offset_mapping`, one row per window, in the
        order of the logits rows; offset_mapping[t] is the [start, end) character span of token t in the context, or
        None for a token outside the context (question, special tokens, padding).
    start_logits, end_logits: arrays [n_features, seq_len].

    For each feature the n_best_size highest start and end logits among context tokens are paired; a pair is a
    candidate when end >= start and it spans at most max_answer_length tokens; its score is start + end logit. The
    best candidate over all features of the example wins; its text is cut from the context by the offsets.
    With version_2_with_negative the no-answer score is the smallest CLS score (start_logits[f, 0] +
    end_logits[f, 0]) over the example's features, and the answer is "" when that score exceeds the best span score
    plus null_score_diff_threshold. An example without a valid candidate gets "" in both modes.
    Returns {example id: answer text}, with every example of `examples` present.
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError("n_best_size and max_answer_length must be >= 1")
    start_all = np.asarray(start_logits, dtype=np.float64)
    end_all = np.asarray(end_logits, dtype=np.float64)
    example_ids = [str(i) for i in _column(examples, "id")]
    contexts = _column(examples, "context")
    feature_example_ids = [str(i) for i in _column(features, "example_id")]
    offsets_all = _column(features, "offset_mapping")
    if start_all.ndim != 2 or start_all.shape != end_all.shape:
        raise ValueError(f"start/end logits must be 2-D arrays of one shape, got {start_all.shape} and {end_all.shape}")
    if start_all.shape[0] != len(feature_example_ids):
        raise ValueError(f"{start_all.shape[0]} rows of logits for {len(feature_example_ids)} features")

    features_of: dict[str, list[int]] = defaultdict(list)
    for index, example_id in enumerate(feature_example_ids):
        features_of[example_id].append(index)

    predictions: dict[str, str] = {}
    for example_id, context in zip(example_ids, contexts):
        best_score = -np.inf
        best_text = ""
        null_score = np.inf
        for f in features_of.get(example_id, ()):
            offsets = offsets_all[f]
            length = min(len(offsets), start_all.shape[1])
            starts_f = start_all[f, :length]
            ends_f = end_all[f, :length]
            null_score = min(null_score, start_all[f, 0] + end_all[f, 0])
            in_context = np.fromiter((o is not None for o in offsets[:length]), dtype=bool, count=length)
            in_context &= np.isfinite(starts_f) & np.isfinite(ends_f)
            top_starts = _top_valid(starts_f, in_context, n_best_size)
            top_ends = _top_valid(ends_f, in_context, n_best_size)
            if top_starts.size == 0 or top_ends.size == 0:
                continue
            # every (start, end) pair of the two short lists at once: rows are starts, columns are ends
            span_len = top_ends[None, :] - top_starts[:, None] + 1
            scores = starts_f[top_starts][:, None] + ends_f[top_ends][None, :]
            scores = np.where((span_len >= 1) & (span_len <= max_answer_length), scores, -np.inf)
            flat = int(np.argmax(scores))  # first maximum: the higher-ranked start, then end, wins ties
            score = scores.flat[flat]
            if score > best_score:  # strict: on a tie the earlier feature keeps its answer
                s = int(top_starts[flat // scores.shape[1]])
                e = int(top_ends[flat % scores.shape[1]])
                best_score = score
                best_text = context[offsets[s][0] : offsets[e][1]]
        if not np.isfinite(best_score):
            predictions[example_id] = ""
        elif version_2_with_negative and null_score > best_score + null_score_diff_threshold:
            predictions[example_id] = ""
        else:
            predictions[example_id] = best_text
    return predictions
