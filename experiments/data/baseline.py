"""A no-learning floor: guess the answer type from question keywords, answer with the first span of that type.

    python -m experiments.data.baseline [CONFIG.yaml ...] [key=value ...]

prints EM/F1 of the heuristic on the dev split of the configured data (default: the generated set). A trained model
has to beat this by a wide margin for the comparison of optimizers to mean anything; the generated set gives every
answer type same-type distractors in the paragraph, so the heuristic scores about F1 32 on the default set and 52 on
the default ablation's (2 facts per paragraph: one distractor of the type, so about half right).
"""

from __future__ import annotations

import re
import sys

from experiments.config import ConfigError, load_config, split_args
from experiments.qa_eval import metric_keys, score_predictions

from .errors import DataError
from .generated_text import COLOURS, DEVICE_ADJECTIVES, DEVICE_NOUNS, JOBS
from .loading import load_examples

# Capitalised words that start English sentences, not names.
_NOT_NAMES = {
    "the",
    "a",
    "an",
    "in",
    "by",
    "born",
    "these",
    "what",
    "some",
    "old",
    "nobody",
    "children",
    "songs",
    "travellers",
    "fishermen",
    "engineers",
    "members",
    "scholars",
    "about",
    "when",
    "who",
    "which",
    "where",
    "how",
    "this",
    "it",
}


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_TYPE_PATTERNS: dict[str, re.Pattern] = {
    "year": re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})\b"),
    "length": re.compile(r"\b\d+ (?:metres|meters|km|miles|feet)\b"),
    "number": re.compile(r"\b\d[\d,]*\b"),
    "colour": re.compile(rf"\b(?:{_alternatives(COLOURS)})\b"),
    "device": re.compile(rf"\b(?:{_alternatives(DEVICE_ADJECTIVES)}) (?:{_alternatives(DEVICE_NOUNS)})\b"),
    "job": re.compile(rf"\b(?:{_alternatives(JOBS)})\b"),
    "person": re.compile(r"\b[A-Z][a-z]+ [A-Z][a-z]+\b"),
    "place": re.compile(r"\b(?:in|of|from|at|to) ([A-Z][a-z]+)\b(?! [A-Z])"),
    "name": re.compile(r"\b[A-Z][a-z]+\b"),
}

# (keywords in the lowercased question, answer type); the first rule that matches wins.
_RULES: list[tuple[tuple[str, ...], str]] = [
    (("year", "when"), "year"),
    (("colour", "color"), "colour"),
    (("metres", "how long", "length"), "length"),
    (("population", "inhabitants", "how many"), "number"),
    (("invent", "device"), "device"),
    (("profession", "job", "for a living", "occupation"), "job"),
    (("who", "whom"), "person"),
    (("where", "port", "town", "live"), "place"),
]


def question_type(question: str) -> str:
    q = question.lower()
    for keywords, kind in _RULES:
        if any(re.search(rf"\b{re.escape(k)}", q) for k in keywords):
            return kind
    return "name"


def heuristic_answer(question: str, context: str, title: str = "") -> str:
    """The first span of the question's answer type that is part of neither the question nor the title (the topic
    of a paragraph is rarely the answer)."""
    kind = question_type(question)
    for match in _TYPE_PATTERNS[kind].finditer(context):
        span = match.group(1) if match.groups() else match.group(0)
        if span in question or (title and span in title):
            continue
        if kind in ("person", "name") and span.split()[0].lower() in _NOT_NAMES:
            continue
        return span
    return ""


def heuristic_baseline(dev_dataset, metric: str = "squad", version_2_with_negative: bool = False) -> dict[str, float]:
    """Scores (percent) of `heuristic_answer` on a Dataset with id, context, question, answers, by the rules of
    `data.metric` (`experiments.qa_eval.score_predictions`): {"exact_match", "f1"}, or {"exact_match", "rouge_w"}
    for klue."""

    predictions, references = {}, {}
    for example in dev_dataset:
        title = example.get("title") or ""
        predictions[example["id"]] = heuristic_answer(example["question"], example["context"], title)
        references[example["id"]] = list(example["answers"]["text"])
    logged, _ = score_predictions(
        predictions, references, metric=metric, version_2_with_negative=version_2_with_negative
    )
    em_key, second = metric_keys(metric)
    return {"exact_match": float(logged[em_key]), second[4:]: float(logged[second])}


def main(argv: list[str] | None = None) -> int:

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    files, overrides = split_args(argv)
    try:
        cfg = load_config(files, overrides)
        _, dev, _ = load_examples(cfg.data)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    scores = heuristic_baseline(dev, cfg.data.metric, cfg.data.version_2_with_negative)
    second = "ROUGE-W" if "rouge_w" in scores else "F1"
    print(
        f"heuristic baseline (first span of the question's answer type) on {len(dev)} dev examples "
        f"(data.source={cfg.data.source}, data.metric={cfg.data.metric}): EM {scores['exact_match']:.1f}  "
        f"{second} {scores.get('rouge_w', scores.get('f1')):.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
