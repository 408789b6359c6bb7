"""From start/end logits to answer strings: the usual n-best search over the features (doc-stride windows) of each
example, as HF's run_qa example does it (`postprocess_qa_predictions`); experiments.qa_eval scores the answers."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


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
    return_null_odds: bool = False,
):
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
    Returns {example id: answer text}, with every example of `examples` present; with return_null_odds, the pair
    (answers, null odds) where null odds = no-answer score - best span score per example (+inf without a valid span),
    what `squad_v2_scores` takes to find the best threshold (as HF run_qa's null_odds.json).
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
    null_odds: dict[str, float] = {}
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
        null_odds[example_id] = float(null_score - best_score) if np.isfinite(best_score) else float("inf")
        if not np.isfinite(best_score):
            predictions[example_id] = ""
        elif version_2_with_negative and null_score > best_score + null_score_diff_threshold:
            predictions[example_id] = ""
        else:
            predictions[example_id] = best_text
    return (predictions, null_odds) if return_null_odds else predictions
