"""The metrics of the experiment: one table that the trainer, the schema, the sweep spec, collect, stats, targets, the
report, the plots and the sharpness section read.

A metric is a key the runs log (metrics.jsonl, summary.json's final block) or a column the analysis computes
(sharpness.csv), with everything a consumer needs to show and judge it: label and short name, number format, which
way is better, the values it can take, whether sam_full and sam_last must agree on it at k = 1 (where the two are
the same algorithm), whether the report pairs it across arms, the default updates-to-target values, whether the
committed curves keep it. Adding a metric is one row here (plus the code that computes it); tests/test_metrics.py
holds the table against the keys a real training run logs and the columns the sharpness package writes.

Verdict words follow the metric's kind, never a guess from its name: a score reads "better/worse", a loss "lower
loss/higher loss", a sharpness measure "flatter/sharper", a gap "smaller/larger gap"; a metric whose direction is
NEITHER gets no better/worse word at all (only "higher/lower <label>").

The sharpness measures at a radius ρ are one row each (a key with the placeholder `{rho}`): `lookup` resolves
"avg_sharpness_rho0.05" to the row of "avg_sharpness_rho{rho}" with ρ filled into the label.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

HIGHER, LOWER, NEITHER = "higher", "lower", "neither"  # which way is better
EXACT, TOLERANCE = "exact", "tolerance"  # equal_at_k1: exactly equal, or within EQUALITY_TOL
EQUALITY_TOL = 1e-6  # |sam_full − sam_last| allowed at k = 1 for a metric compared within tolerance (float rounding)

# kind → (word when a > b, word when a < b) of a verdict on a − b; None: "higher/lower <label>" (no judgement)
KIND_WORDS: dict[str, tuple[str, str] | None] = {
    "score": ("better", "worse"),
    "loss": ("higher loss", "lower loss"),
    "sharpness": ("sharper", "flatter"),
    "gap": ("larger gap", "smaller gap"),
    "other": None,
}


@dataclass(frozen=True)
class Metric:
    key: str  # as logged ("dev/f1") or as the analysis names its column ("lambda_max"); "{rho}" for a radius
    label: str  # words of a table row or a sentence: "dev F1"
    short: str  # the name without the split: "F1"
    fmt: str  # number format of tables
    direction: str  # HIGHER | LOWER | NEITHER: which way is better
    kind: str  # a key of KIND_WORDS: the words of a verdict
    source: str  # "train" (the trainer logs it), "eval" (an evaluation logs it), "sharpness" (sharpness.csv)
    bounds: tuple[float, float] = (-math.inf, math.inf)  # the values it can take
    equal_at_k1: str | None = None  # EXACT | TOLERANCE: sam_full and sam_last must agree at k = 1; None: not checked
    paired: bool = False  # in the report's paired tables
    targets: tuple[float, ...] = ()  # default updates-to-target values (a sweep file's report.targets overrides)
    curve: bool = False  # kept in the committed report's curves.csv
    best_by: bool = False  # a choice of train.save_best_by and a key of a sweep file's report.targets
    optional: bool = False  # reported only when some run logged it (v2 breakdown, KLUE-MRC's ROUGE-W, fp16 skips)
    dashboard: tuple[str, ...] = ()  # the W&B workspace sections it gets a panel in (analysis.dashboard.SECTIONS)

    @property
    def better(self) -> str:
        """ "higher is better", "lower is better" or "" (direction NEITHER)."""
        return f"{self.direction} is better" if self.direction != NEITHER else ""

    def reaches(self, value: float, target: float) -> bool:
        """Whether `value` has reached `target`: >= for HIGHER, <= for LOWER; ValueError for NEITHER."""
        if self.direction == HIGHER:
            return value >= target
        if self.direction == LOWER:
            return value <= target
        raise ValueError(f"metric {self.key!r} has no direction (neither): no target can be reached")

    def improves(self, value: float, best: float) -> bool:
        """Whether `value` is strictly better than `best` (the trainer's best-checkpoint rule)."""
        if self.direction == HIGHER:
            return value > best
        if self.direction == LOWER:
            return value < best
        raise ValueError(f"metric {self.key!r} has no direction (neither): it cannot choose a best checkpoint")


PERCENT = (0.0, 100.0)
NONNEGATIVE = (0.0, math.inf)
ANY = (-math.inf, math.inf)


def _score(key: str, label: str, short: str, **kw) -> Metric:
    return Metric(key, label, short, ".2f", HIGHER, "score", "eval", PERCENT, **kw)


def _loss(key: str, label: str, short: str, source: str, fmt: str = ".4f", **kw) -> Metric:
    return Metric(key, label, short, fmt, LOWER, "loss", source, NONNEGATIVE, **kw)


def _other(key: str, label: str, short: str, direction: str, bounds=NONNEGATIVE, fmt=".3g", **kw) -> Metric:
    return Metric(key, label, short, fmt, direction, "other", "train", bounds, **kw)


def _sharpness(key: str, label: str, short: str, bounds=ANY) -> Metric:
    # no better/worse: whether a flatter minimum generalises better is what the section asks (Kendall tau), not a
    # premise; at k = 1 sam_full and sam_last are the same model, so the same measure up to float rounding
    return Metric(key, label, short, ".4g", NEITHER, "sharpness", "sharpness", bounds, TOLERANCE, paired=True)


METRICS: tuple[Metric, ...] = (
    # evaluations (experiments.trainer.evaluate, experiments.qa_eval.score_predictions)
    _score("dev/f1", "dev F1", "F1", equal_at_k1=EXACT, paired=True, targets=(50.0, 80.0, 90.0), curve=True,
           best_by=True, dashboard=("answer", "final")),
    _score("dev/em", "dev EM", "EM", equal_at_k1=EXACT, paired=True, curve=True, best_by=True, dashboard=("final",)),
    _loss("dev/loss", "dev loss", "loss", "eval", equal_at_k1=TOLERANCE, paired=True, curve=True, best_by=True,
          dashboard=("answer", "final")),
    _score("dev/rouge_w", "dev ROUGE-W", "ROUGE-W", equal_at_k1=EXACT, curve=True, optional=True,
           best_by=True),
    _score("dev/has_ans_em", "dev EM, questions with an answer (HasAns)", "HasAns EM", optional=True),
    _score("dev/has_ans_f1", "dev F1, questions with an answer (HasAns)", "HasAns F1", optional=True),
    _score("dev/no_ans_em", "dev EM, questions without an answer (NoAns)", "NoAns EM", optional=True),
    _score("dev/no_ans_f1", "dev F1, questions without an answer (NoAns)", "NoAns F1", optional=True),
    _score("dev/has_ans_rouge_w", "dev ROUGE-W, questions with an answer (HasAns)", "HasAns ROUGE-W", optional=True),
    _score("dev/no_ans_rouge_w", "dev ROUGE-W, questions without an answer (NoAns)", "NoAns ROUGE-W", optional=True),
    _score("dev/best_em", "dev EM at the best no-answer threshold", "best EM", optional=True),
    _score("dev/best_f1", "dev F1 at the best no-answer threshold", "best F1", optional=True),
    Metric("dev/best_em_thresh", "no-answer threshold of the best EM", "threshold", ".3g", NEITHER, "other", "eval",
           optional=True),
    Metric("dev/best_f1_thresh", "no-answer threshold of the best F1", "threshold", ".3g", NEITHER, "other", "eval",
           optional=True),
    # training updates (experiments.trainer.log_update) and the gradient-fidelity diagnostic (sam.diagnostics)
    _loss("train/loss", "train loss", "loss", "train", equal_at_k1=TOLERANCE, curve=True),
    _loss("train/perturbed_loss", "perturbed train loss L(w + ε)", "perturbed loss", "train"),
    _other("train/grad_norm", "gradient norm (before clipping)", "grad norm", NEITHER),
    _other("train/lr", "learning rate", "lr", NEITHER),
    _other("train/step_time", "seconds per update", "s/update", LOWER, curve=True, dashboard=("cost",)),
    _other("train/skipped", "update skipped by the fp16 GradScaler", "skipped", LOWER, (0.0, 1.0), ".0f",
           optional=True),
    _other("diag/grad_cos", "cos(last-replay gradient, full-replay gradient)", "grad cos", HIGHER, (-1.0, 1.0),
           ".3f", curve=True, dashboard=("diagnostics",)),
    _other("diag/grad_norm_ratio", "‖last-replay gradient‖ / ‖full-replay gradient‖", "norm ratio", NEITHER),
    # the sharpness section (analysis.sharpness: sharpness.csv)
    _sharpness("lambda_max", "λmax", "λmax"),
    _sharpness("trace", "tr(H)", "tr(H)"),
    _sharpness("avg_sharpness_rho{rho}", "average sharpness ρ={rho}", "avg sharpness ρ={rho}"),
    _sharpness("worst_sharpness_rho{rho}", "worst-case sharpness ρ={rho}", "worst sharpness ρ={rho}", NONNEGATIVE),
    _loss("train_loss", "train loss (subset)", "train loss", "sharpness", ".4g"),
    _loss("dev_loss", "dev loss (subset)", "dev loss", "sharpness", ".4g"),
    Metric("gap_subset", "gap: dev − train loss (subsets)", "subset gap", ".4g", LOWER, "gap", "sharpness", ANY,
           TOLERANCE, paired=True),
    Metric("gap_summary", "gap: final dev/loss − train/loss (summary.json)", "summary gap", ".4g", LOWER, "gap",
           "sharpness"),
)  # fmt: skip
BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
_PATTERNS = [
    (re.compile("^" + re.escape(m.key).replace(re.escape("{rho}"), "(?P<rho>[0-9.eE+-]+)") + "$"), m)
    for m in METRICS
    if "{rho}" in m.key
]

# the primary score of a run: dev/f1, or dev/rouge_w when data.metric=klue (experiments.qa_eval.metric_keys)
PRIMARY = "dev/f1"


def bare(key: str) -> str:
    """A key without a collect column prefix: "final.dev/f1" → "dev/f1", "best.dev/f1" → "dev/f1"."""
    return key.split(".", 1)[1] if key.startswith(("final.", "best.")) else key


def lookup(key: str) -> Metric | None:
    """The row of `key` (a logged key, a column of collect_runs such as "final.dev/f1", or a sharpness.csv column
    such as "avg_sharpness_rho0.05", whose radius is filled into the label); None when the table has no row."""
    key = bare(key)
    if key in BY_KEY:
        return BY_KEY[key]
    for pattern, row in _PATTERNS:
        hit = pattern.match(key)
        if hit:
            rho = hit.group("rho")
            return dataclasses.replace(
                row, key=key, label=row.label.replace("{rho}", rho), short=row.short.replace("{rho}", rho)
            )
    return None


def metric(key: str) -> Metric:
    """The row of `key` (see `lookup`); KeyError naming the key when the table has none."""
    row = lookup(key)
    if row is None:
        raise KeyError(f"metric {key!r} is not in experiments.metrics.METRICS; add its row there")
    return row


def keyed(key: str, rho: float) -> str:
    """The column of a per-radius measure: keyed("avg_sharpness_rho{rho}", 0.05) → "avg_sharpness_rho0.05"."""
    return key.replace("{rho}", f"{rho:g}")


def label(key: str) -> str:
    """The row's label, or `key` itself (without a final./best. prefix) when the table has no row."""
    row = lookup(key)
    return row.label if row else bare(key)


def short(key: str) -> str:
    """The row's short name ("F1"), or the key's last part when the table has no row."""
    row = lookup(key)
    return row.short if row else bare(key).rsplit("/", 1)[-1]


def number_format(key: str) -> str:
    """The row's number format; ".3g" when the table has no row."""
    row = lookup(key)
    return row.fmt if row else ".3g"


def bounds(key: str) -> tuple[float, float]:
    """The values the row's metric can take; unbounded when the table has no row."""
    row = lookup(key)
    return row.bounds if row else ANY


def words(key: str) -> tuple[str, str]:
    """(word when a > b, word when a < b) of a verdict on a − b: the kind's words, or "higher/lower <label>"."""
    row = metric(key)
    fixed = KIND_WORDS[row.kind]
    return fixed if fixed else (f"higher {row.label}", f"lower {row.label}")


def select(source: str | None = None, **flags) -> tuple[Metric, ...]:
    """The rows of `source` ("train", "eval", "sharpness"; None: all) whose fields equal `flags`, e.g.
    select("eval", paired=True), in table order."""
    return tuple(
        m
        for m in METRICS
        if (source is None or m.source == source) and all(getattr(m, f) == v for f, v in flags.items())
    )


# train.save_best_by's choices (experiments.schema) and the keys a sweep file's report.targets may name
# (experiments.sweep_spec), in table order
BEST_BY: tuple[str, ...] = tuple(m.key for m in METRICS if m.best_by)
