"""The report of a sweep: numbers, figures and findings drawn from its run directories.

    python -m analysis.report results_dir=results sweep=ablation [out=results/report]

reads `<results_dir>/runs/<sweep>/` (see analysis.collect) and writes into `out` (default
`analysis.collect.report_dir`: `<results_dir>/report/` for the default sweep `ablation`, else `report-<sweep>/`):

    REPORT.md       setup, result tables, paired differences, the k = 1 sanity row, figures, failed and diverged
                    runs, and findings generated from the numbers (no claim is written in advance)
    REPORT.html     the same, self-contained: figures embedded as base64 PNG, tables as HTML
    summary.csv     mean, std and 95% t CI per metric × arm × k (completed runs)
    paired.csv      paired differences between arms per metric × k (bootstrap CI, paired t-test, verdict)
    sanity.csv      the k = 1 equality checks of sam_full against sam_last
    runs.csv        one line per run: grid cell, status, reason, final metrics, time
    figures/*.png   the figures (analysis.plots)

If `out/sharpness.md` exists (written by analysis.sharpness), it becomes the report's sharpness section, with its
images embedded in the HTML. The output depends only on the run files: no clock, no randomness beyond the fixed
bootstrap seed. Bad arguments and a missing sweep folder are one-line errors with exit status 2.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import plots
from analysis.collect import (
    REPORT_CURVE_METRICS,
    CollectError,
    arm_order,
    collect_curves,
    collect_runs,
    read_json,
    report_dir,
    sweep_dir,
)
from analysis.stats import (
    ci_and_test_disagree,
    curve_equality,
    equality_check,
    metric_label,
    metric_range,
    metric_short,
    paired_differences,
    summarize,
)
from analysis.targets import DEFAULT_TARGETS, cost_ratio, target_summary, time_to_target

log = logging.getLogger(__name__)

# (column of collect_runs, label, number format); the first is the primary metric of the findings
METRICS = (
    ("final.dev/f1", "dev F1", ".2f"),
    ("final.dev/em", "dev EM", ".2f"),
    ("final.dev/loss", "dev loss", ".4f"),
    ("final.train/loss", "train loss", ".4f"),
)
# Reported only when some run logged them: KLUE-MRC's ROUGE-W (data.metric=klue) and the SQuAD v2 breakdown
# (data.version_2_with_negative) into questions with and without an answer.
OPTIONAL_METRICS = (
    ("final.dev/rouge_w", "dev ROUGE-W (KLUE-MRC)", ".2f"),
    ("final.dev/has_ans_f1", "dev F1, questions with an answer (HasAns)", ".2f"),
    ("final.dev/no_ans_f1", "dev F1, questions without an answer (NoAns)", ".2f"),
    ("final.dev/has_ans_rouge_w", "dev ROUGE-W, questions with an answer (HasAns)", ".2f"),
    ("final.dev/no_ans_rouge_w", "dev ROUGE-W, questions without an answer (NoAns)", ".2f"),
)
HIGHER_IS_BETTER = {
    "final.dev/f1": True,
    "final.dev/em": True,
    "final.dev/loss": False,
    "final.train/loss": False,
    **{m: True for m, _, _ in OPTIONAL_METRICS},
}
# (a, b, what the comparison asks); each is reported as a − b per k
COMPARISONS = (
    ("sam_full", "sam_last", "the cost of the last-batch replay bug"),
    ("sam_full", "adamw", "what correct SAM buys over AdamW"),
    ("sam_micro", "sam_full", "m-SAM against SAM"),
)
PAIRED_METRICS = ("final.dev/em", "final.dev/loss")  # after the primary score (paired_metrics)
SANITY_METRICS = ("final.dev/f1", "final.dev/em", "final.dev/loss", "final.train/loss")
FIGURE_TEXT = {
    "dev_curves": (
        "Learning curves",
        "The dev score the runs logged and the dev loss at every evaluation against "
        "the optimizer update (periodic evaluations score the fixed dev subset, the epoch-end and final "
        "ones the whole dev set). Line: mean over seeds; band: min–max over seeds. Arms with identical "
        "curves (k = 1) are drawn as one line.",
    ),
    "time_to_target": (
        "Updates to reach a dev F1 target",
        "For each run, the first evaluation at which dev F1 "
        "reached the target (dots; bar: median over seeds). An open triangle is a run that never "
        "reached it, drawn at its last evaluation: it needs more updates than that.",
    ),
    "train_loss": (
        "Training loss",
        "Clean (first-pass) training loss against the optimizer update, one panel per "
        "accumulation k. Line: mean over seeds; band: min–max over seeds.",
    ),
    "final_scores": (
        "Final dev EM and F1",
        "Mean over seeds with a min–max bar; small dots are single seeds. Completed runs only.",
    ),
    "step_time": (
        "Time per update",
        "Mean wall time of one optimizer update (a window of k micro-batches), "
        "grouped by k with one bar per arm (mean over seeds, written above the bar); error bars span "
        "min–max over seeds.",
    ),
    "grad_cos": (
        "Gradient fidelity",
        "Cosine between the gradient the last-batch replay uses and the full-replay "
        "SAM gradient of the same window (diag/grad_cos), against the update. 1 means the bug changes "
        "nothing.",
    ),
}
FIGURE_MISSING = {
    "train_loss": "no train/loss events in metrics.jsonl",
    "dev_curves": "no evaluation events",
    "time_to_target": "no dev F1 evaluations of completed runs",
    "final_scores": "no completed run with final dev metrics",
    "step_time": "no completed run with mean_step_time_s in its summary",
    "grad_cos": "no diag/grad_cos events; the sweep ran with diagnostics.grad_fidelity=false",
}
KNOWN_KEYS = ("results_dir", "sweep", "out")
USAGE = "usage: python -m analysis.report results_dir=DIR sweep=NAME [out=DIR/report or DIR/report-NAME]"
N_BOOT = 10000
BOOT_SEED = 0


class ReportError(RuntimeError):
    """A problem with the arguments or the sweep that stops the report; the message is one line."""


# ---------------------------------------------------------------------------------------------------------------------
# formatting


def _isnan(x: Any) -> bool:
    try:
        return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))
    except TypeError:
        return False


def fmt(x: Any, spec: str = ".2f", signed: bool = False) -> str:
    if _isnan(x):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(float(x), ("+" if signed else "") + spec)


def fmt_p(p: Any) -> str:
    if _isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: Any) -> str:
    """ "p = 0.012" or "p < 0.001" (never "p = < 0.001")."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _cell(value: Any) -> str:
    text = "" if _isnan(value) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub pipe table; align is one letter per column (l, r, c), default left."""
    align = align or "l" * len(headers)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _values(series: pd.Series) -> list:
    """Distinct non-missing values in a stable order."""
    seen = []
    for value in series.tolist():
        if isinstance(value, (float, np.floating)) and not math.isnan(value) and float(value).is_integer():
            value = int(value)  # a column with a missing entry turns ints into floats; 128 should read 128
        if not _isnan(value) and value not in seen:
            seen.append(value)
    try:
        return sorted(seen)
    except TypeError:
        return sorted(seen, key=str)


def _join(values: Sequence[Any], empty: str = "–") -> str:
    return ", ".join(str(v) for v in values) if len(values) else empty


def _col(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series([None] * len(runs), index=runs.index, dtype=object)


# ---------------------------------------------------------------------------------------------------------------------
# the numbers


def completed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "completed"]


def _with_metrics(runs: pd.DataFrame, metrics: Iterable[str]) -> pd.DataFrame:
    """runs with every metric column present (all NaN when no run wrote it, e.g. a sweep where every run failed),
    so that the tables still show each grid cell with n = 0."""
    missing = [m for m in metrics if m not in runs.columns]
    return runs.assign(**{m: np.nan for m in missing}) if missing else runs


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def reported_metrics(runs: pd.DataFrame) -> tuple[str, ...]:
    """METRICS, then each of OPTIONAL_METRICS that at least one run wrote."""
    optional = tuple(m for m, _, _ in OPTIONAL_METRICS if m in runs.columns and runs[m].notna().any())
    return tuple(m for m, _, _ in METRICS) + optional


def primary_metric(runs: pd.DataFrame) -> str:
    """The score the answer is about: dev/f1, or dev/rouge_w for runs scored by KLUE-MRC's rules (data.metric=klue
    logs ROUGE-W instead of F1)."""

    def logged(metric: str) -> bool:
        return f"final.{metric}" in runs.columns and runs[f"final.{metric}"].notna().any()

    return "dev/rouge_w" if logged("dev/rouge_w") and not logged("dev/f1") else "dev/f1"


def summary_table(runs: pd.DataFrame, metrics: Sequence[str] = tuple(m for m, _, _ in METRICS)) -> pd.DataFrame:
    """summarize() of each metric over the completed runs, per arm × k, with every grid cell present (n = 0 when
    no run of the cell completed) and `runs` = how many runs the cell has in any status."""
    runs = _with_metrics(runs, metrics)
    done = completed_runs(runs)
    cells = runs.dropna(subset=["arm"]).groupby(["arm", "k"], dropna=False).size().rename("runs").reset_index()
    frames = []
    for metric in metrics:
        if metric not in runs.columns:
            continue
        table = summarize(done, metric, by=("arm", "k")).drop(columns=["metric"])
        table["k"] = pd.to_numeric(table["k"], errors="coerce").astype("Int64")
        table = cells.merge(table, on=["arm", "k"], how="left")
        table.insert(0, "metric", metric)
        table["n"] = table["n"].fillna(0).astype(int)
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["metric", "arm", "k", "runs", "n", "mean", "std", "ci_low", "ci_high", "ci_half"])
    out = pd.concat(frames, ignore_index=True)
    order = {a: i for i, a in enumerate(arm_order(out["arm"]))}
    metric_order = {m: i for i, m in enumerate(metrics)}
    keys = pd.DataFrame(
        {
            "m": out["metric"].map(metric_order),
            "a": out["arm"].map(order),
            "k": pd.to_numeric(out["k"], errors="coerce"),
        }
    )
    out = out.loc[keys.sort_values(["m", "a", "k"], kind="mergesort").index].reset_index(drop=True)
    return out[["metric", "arm", "k", "runs", "n", "mean", "std", "ci_low", "ci_high", "ci_half"]]


def paired_metrics(runs: pd.DataFrame) -> tuple[str, ...]:
    """The metrics of the paired tests: the primary score (primary_metric), then PAIRED_METRICS."""
    return (f"final.{primary_metric(runs)}", *PAIRED_METRICS)


def paired_table(
    runs: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    comparisons: Sequence[tuple] = COMPARISONS,
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
) -> pd.DataFrame:
    """paired_differences() of each comparison (a − b per k, paired on seed) and metric (default:
    paired_metrics(runs)), completed runs only. A (comparison, k) cell is left out unless the sweep has runs of
    both arms at that k (in any status: a cell whose runs failed is reported with n = 0)."""
    metrics = paired_metrics(runs) if metrics is None else tuple(metrics)
    runs = _with_metrics(runs, metrics)
    done = completed_runs(runs)
    arms_at_k = runs.dropna(subset=["arm"]).groupby("k", dropna=False)["arm"].agg(set).to_dict()
    frames = []
    for metric in metrics:
        if metric not in runs.columns:
            continue
        for a, b, _ in comparisons:
            if not any({a, b} <= arms for arms in arms_at_k.values()):
                continue
            table = paired_differences(done, metric, a, b, by=("k",), n_boot=n_boot, seed=seed)
            both = table["k"].map(lambda k, pair={a, b}: pair <= arms_at_k.get(k, set()))
            frames.append(table[both.astype(bool)])
    if not frames:
        return pd.DataFrame(
            columns=[
                "metric",
                "a",
                "b",
                "k",
                "n",
                "mean_diff",
                "std_diff",
                "ci_low",
                "ci_high",
                "p_value",
                "verdict",
                "pairs",
                "unpaired",
            ]
        )
    out = pd.concat(frames, ignore_index=True)
    return out[["metric", "a", "b", "k", *[c for c in out.columns if c not in ("metric", "a", "b", "k")]]]


def sanity_table(
    runs: pd.DataFrame, curves: pd.DataFrame, a: str = "sam_full", b: str = "sam_last", k: int = 1
) -> pd.DataFrame:
    """The k = 1 equality checks (completed runs): the final metrics, and the whole train/loss curve."""
    runs = _with_metrics(runs, SANITY_METRICS)
    done = completed_runs(runs)
    rows = [equality_check(done, metric, a=a, b=b, k=k) for metric in SANITY_METRICS]
    if not curves.empty:
        ok_ids = set(done["run_id"])
        rows.append(curve_equality(curves[curves["run_id"].isin(ok_ids)], "train/loss", a=a, b=b, k=k))
    return pd.DataFrame(
        rows, columns=["metric", "a", "b", "k", "n", "pairs", "unpaired", "max_abs_diff", "tol", "passed", "verdict"]
    )


def not_completed(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run whose status is not completed (failed, diverged, running, unknown), with its reason."""
    rest = runs[runs["status"] != "completed"]
    return rest[["run_id", "arm", "k", "seed", "status", "reason"]].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------------
# findings: sentences generated from the tables


def _metric_label(metric: str) -> str:
    return next((label for m, label, _ in METRICS + OPTIONAL_METRICS if m == metric), metric)


def _metric_fmt(metric: str) -> str:
    return next((spec for m, _, spec in METRICS + OPTIONAL_METRICS if m == metric), ".3g")


def _direction_text(a: str, b: str, metric: str, diff: float) -> str:
    label = _metric_label(metric)
    higher = diff > 0
    better = higher == HIGHER_IS_BETTER.get(metric, True)
    if (a, b) == ("sam_full", "sam_last"):
        if better:
            hurt = "costs" if HIGHER_IS_BETTER.get(metric, True) else "raises"
            return f"replaying only the last micro-batch {hurt} {label}"
        return f"the last-batch replay comes out better on {label} here, against the expectation that it hurts"
    word = "higher" if higher else "lower"
    quality = "better" if better else "worse"
    return f"{a} has {word} {label} than {b} ({quality})"


def _pair_sentence(row: pd.Series) -> str:
    metric, spec = row["metric"], _metric_fmt(row["metric"])
    head = (
        f"At k={row['k']}, {row['a']} − {row['b']} {_metric_label(metric)} = {fmt(row['mean_diff'], spec, signed=True)}"
    )
    if row["n"] < 2:
        return f"{head} from n={row['n']} pair(s): too few seeds for a CI."
    ci = f"[95% CI {fmt(row['ci_low'], spec, signed=True)}, {fmt(row['ci_high'], spec, signed=True)}]"
    stats_text = f"{ci}, n={row['n']} seeds, paired t {p_clause(row['p_value']).replace(' = ', '=')}"
    if row["ci_low"] > 0 or row["ci_high"] < 0:
        text = f"{head} {stats_text}: {_direction_text(row['a'], row['b'], metric, row['mean_diff'])}."
    else:
        text = f"{head} {stats_text}: no significant difference (CI spans 0)."
    if ci_and_test_disagree(row["ci_low"], row["ci_high"], float(row["p_value"])):
        text += " The bootstrap CI and the t-test disagree at the 5% level" + (
            " (a percentile bootstrap over so few seeds is too narrow)." if row["n"] < 5 else "."
        )
    return text


def findings(runs: pd.DataFrame, curves: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """The findings after the answer (see `answer`), one sentence (or a few) each, all derived from the numbers
    passed in; how many runs completed comes last."""
    out: list[str] = []
    total = len(runs)
    done = completed_runs(runs)
    counts = runs["status"].value_counts()
    status: list[str] = []  # how many runs completed: said last, after the findings about the question
    if len(done) == total:
        status.append(f"All {_plural(total, 'run')} completed.")
    elif len(done) == 0:
        parts = ", ".join(f"{counts[s]} {s}" for s in sorted(counts.index))
        status.append(
            f"No run completed ({parts}), so there is nothing to compare; the runs and their reasons are "
            f"listed under 'Failed, diverged and unfinished runs'."
        )
    else:
        parts = ", ".join(f"{counts[s]} {s}" for s in sorted(counts.index) if s != "completed")
        status.append(
            f"{len(done)} of {total} runs completed ({parts}); the tables and tests use completed runs "
            f"only, and every other run is listed under 'Failed, diverged and unfinished runs'."
        )

    primary = METRICS[0][0]
    for a, b, _ in COMPARISONS:
        rows = paired[(paired["a"] == a) & (paired["b"] == b) & (paired["metric"] == primary)]
        if (a, b) == ("sam_full", "sam_last"):
            rows = rows[pd.to_numeric(rows["k"], errors="coerce") != 1]  # k=1 is the sanity row above
        for _, row in rows.iterrows():
            out.append(_pair_sentence(row))
        if (a, b) == ("sam_full", "sam_last"):
            loss_rows = paired[(paired["a"] == a) & (paired["b"] == b) & (paired["metric"] == "final.dev/loss")]
            for _, row in loss_rows[pd.to_numeric(loss_rows["k"], errors="coerce") != 1].iterrows():
                out.append(_pair_sentence(row))
            if len(rows) >= 2:
                trend = ", ".join(f"k={r['k']}: {fmt(r['mean_diff'], '.2f', signed=True)}" for _, r in rows.iterrows())
                out.append(f"sam_full − sam_last {_metric_label(primary)} by accumulation: {trend}.")

    if len(paired) and (paired["n"].between(1, 4)).any():
        ns = sorted(set(int(n) for n in paired["n"] if 0 < n < 5))
        out.append(
            f"Caution: the paired comparisons rest on n={'/'.join(map(str, ns))} seeds; with so few seeds "
            f"only large effects can show, and a 'no significant difference' is not evidence of no effect."
        )

    if "mean_step_time_s" in done.columns and done["mean_step_time_s"].notna().any():
        times = done.groupby(["k", "arm"])["mean_step_time_s"].mean()
        for k in sorted(set(int(k) for k in done["k"].dropna())):
            if ("adamw" not in arm_order(done[done["k"] == k]["arm"])) or (k, "adamw") not in times.index:
                continue
            base = times[(k, "adamw")]
            ratios = [
                f"{arm} {times[(k, arm)] / base:.2f}×"
                for arm in arm_order(done["arm"])
                if arm != "adamw" and (k, arm) in times.index and base > 0
            ]
            if ratios:
                out.append(f"At k={k} an update takes {base:.3g} s with AdamW; relative to that: {', '.join(ratios)}.")

    cos = curves[curves["metric"] == "diag/grad_cos"] if not curves.empty else curves
    if len(cos):
        per_k = cos.groupby("k")["value"].mean()
        text = ", ".join(f"k={int(k)}: {v:.3f}" for k, v in per_k.items())
        out.append(
            f"Mean cosine between the last-replay and the full-replay gradient (diag/grad_cos, all SAM runs "
            f"that logged it, all updates): {text}."
        )
    return out + status


# ---------------------------------------------------------------------------------------------------------------------
# the answer: what the sweep says about the question the repo exists for


def question_k(runs: pd.DataFrame, a: str = "sam_full", b: str = "sam_last") -> int | None:
    """The largest accumulation k > 1 at which both arms have completed runs: where the question is asked."""
    done = completed_runs(runs)
    ks = [int(k) for k in _values(done["k"]) if int(k) > 1 and {a, b} <= set(done[done["k"] == k]["arm"])]
    return max(ks) if ks else None


def _arm_cell(runs: pd.DataFrame, arm: str, k: int, metric: str, spec: str) -> str:
    values = completed_runs(runs)
    values = values[(values["arm"] == arm) & (values["k"] == k)][metric].dropna().astype(float)
    if values.empty:
        return "–"
    return fmt(values.mean(), spec) + ("" if len(values) < 2 else f" ± {fmt(values.std(ddof=1), spec)}")


def _cost_text(cells: pd.DataFrame, k: int, metric: str = "dev/f1") -> str:
    """The updates-to-target sentence for sam_last against sam_full at k: among the `metric` targets that sam_full
    reached in most of its runs, the one where sam_last needs the most updates relative to it (when sam_last
    reached none within the budget, that is the earliest one: it gives the largest lower bound)."""
    reached = cells[
        (cells["arm"] == "sam_full")
        & (cells["k"] == k)
        & (cells["target_metric"] == metric)
        & ~cells["median_censored"].astype(bool)
    ]
    label = metric_label(metric)
    if reached.empty:
        return f"sam_full itself reached none of the {label} targets in most seeds, so no updates-to-target ratio."
    ratios = [cost_ratio(cells, "sam_last", "sam_full", k=k, metric=metric, target=float(t)) for t in reached["target"]]
    ratios = [r for r in ratios if not math.isnan(r["ratio"])]
    if not ratios:
        return f"sam_last has no {label} target cell to compare."
    r = max(ratios, key=lambda item: item["ratio"])
    target = r["target"]
    which = (
        f"the largest gap among the {label} targets {', '.join(f'{t:g}' for t in sorted(reached['target']))}; "
        f"a run reaches a target at its first evaluation at or above it, periodic dev-subset evaluations included"
    )
    if r["lower_bound"]:
        # a lower bound is rounded down, so the printed bound still holds (100/60 = 1.67 reads "more than 1.6×")
        bound = math.floor(r["ratio"] * 10 + 1e-9) / 10
        return (
            f"To reach {label} {target:g}, the last-batch replay needs **more than {bound:.1f}× the updates** "
            f"of full replay: sam_full gets there in a median {r['fast_median']:.0f} updates "
            f"({r['fast_reached']}/{r['fast_n']} seeds), sam_last in {r['slow_reached']}/{r['slow_n']} seeds "
            f"within the whole budget of {r['slow_budget']} updates ({which})."
        )
    return (
        f"To reach {label} {target:g}, the last-batch replay needs **{r['ratio']:.1f}× the updates** of full "
        f"replay (median {r['slow_median']:.0f} against {r['fast_median']:.0f}; reached by "
        f"{r['slow_reached']}/{r['slow_n']} and {r['fast_reached']}/{r['fast_n']} seeds; {which})."
    )


def answer(runs: pd.DataFrame, paired: pd.DataFrame, sanity: pd.DataFrame, cells: pd.DataFrame) -> dict[str, str]:
    """The question, the answer in one sentence (effect size, CI, p, n) with the updates-to-target cost, and the
    k = 1 sanity check, each a short paragraph of markdown: {"question", "answer", "cost", "sanity"}."""
    k = question_k(runs)
    metric = primary_metric(runs)
    label, short = metric_label(metric), metric_short(metric)
    out = {
        "question": (
            "**Question.** Does replaying only the last micro-batch in SAM's second pass (the widely "
            "copied loop) cost accuracy, compared with replaying the whole window of k micro-batches?"
        )
    }
    if k is None:
        out["answer"] = (
            "**Answer: not measured.** The sweep has no k > 1 with completed sam_full and sam_last "
            "runs, so it cannot answer the question."
        )
        out["cost"] = ""
    else:
        rows = paired[
            (paired["a"] == "sam_full")
            & (paired["b"] == "sam_last")
            & (paired["metric"] == f"final.{metric}")
            & (pd.to_numeric(paired["k"], errors="coerce") == k)
        ]
        means = (
            f"{label} {_arm_cell(runs, 'sam_full', k, f'final.{metric}', '.1f')} with full replay against "
            f"{_arm_cell(runs, 'sam_last', k, f'final.{metric}', '.1f')} with last-batch replay"
        )
        if rows.empty or rows.iloc[0]["n"] < 2:
            n = 0 if rows.empty else int(rows.iloc[0]["n"])
            out["answer"] = (
                f"**Answer: too few seeds.** At k = {k}: {means}, from {n} paired seed(s); a paired "
                f"comparison needs at least 2."
            )
        else:
            r = rows.iloc[0]
            effect = (
                f"sam_full − sam_last = **{fmt(r['mean_diff'], '.1f', signed=True)} {short}** "
                f"[95% CI {fmt(r['ci_low'], '.1f', signed=True)}, {fmt(r['ci_high'], '.1f', signed=True)}], "
                f"paired t {p_clause(r['p_value'])}, n = {int(r['n'])} seeds"
            )
            excludes = r["ci_low"] > 0 or r["ci_high"] < 0
            significant = excludes and not _isnan(r["p_value"]) and r["p_value"] < 0.05
            if significant and r["mean_diff"] > 0:
                head = "**Answer: yes.**"
            elif significant:
                head = "**Answer: no, the opposite.**"
            else:
                head = "**Answer: not shown.** No significant difference at this budget:"
            out["answer"] = (
                f"{head} At k = {k} the last-batch replay costs accuracy: {means}; {effect}."
                if significant and r["mean_diff"] > 0
                else f"{head} At k = {k}: {means}; {effect}."
            )
        out["cost"] = _cost_text(cells, k, metric)
    checked = sanity[sanity["passed"].notna()] if not sanity.empty else sanity
    if checked.empty:
        out["sanity"] = (
            "**Sanity check (k = 1):** not possible: no seed has completed sam_full and sam_last runs at k = 1."
        )
    elif checked["passed"].astype(bool).all():
        out["sanity"] = (
            "**Sanity check (k = 1): passed.** With one micro-batch per update, full and last replay are "
            "the same algorithm, and sam_full and sam_last agree seed by seed on "
            f"{', '.join(checked['metric'])}."
        )
    else:
        bad = checked[~checked["passed"].astype(bool)]
        out["sanity"] = (
            "**Sanity check (k = 1): FAILED** on " + ", ".join(bad["metric"]) + ": full and last replay "
            "should compute the same thing at k = 1, so the replay code or the setup differs."
        )
    return out


def headline_table(runs: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """Per arm at the question's k (and k = 1): the final primary score (dev F1, or ROUGE-W for KLUE-MRC), EM and
    loss over seeds, and the median updates to each target of the primary score (reached/n)."""
    k = question_k(runs)
    ks = [kk for kk in (k, 1) if kk is not None and kk in set(int(v) for v in _values(completed_runs(runs)["k"]))]
    metric = primary_metric(runs)
    label = metric_label(metric)
    f1_targets = (
        sorted(cells[cells["target_metric"] == metric]["target"].astype(float).unique()) if not cells.empty else []
    )
    headers = ["arm", "k", "seeds", label, "dev EM", "dev loss"] + [
        f"updates to {label.split(' ', 1)[-1]} {t:g}" for t in f1_targets
    ]
    rows = []
    done = completed_runs(runs)
    for kk in ks:
        for arm in arm_order(done[done["k"] == kk]["arm"]):
            n = int(((done["arm"] == arm) & (done["k"] == kk)).sum())
            row = [arm, kk, n] + [
                _arm_cell(runs, arm, kk, m, spec)
                for m, spec in ((f"final.{metric}", ".1f"), ("final.dev/em", ".1f"), ("final.dev/loss", ".3f"))
            ]
            for t in f1_targets:
                hit = cells[
                    (cells["arm"] == arm)
                    & (cells["k"] == kk)
                    & (cells["target_metric"] == metric)
                    & (cells["target"].astype(float) == t)
                ]
                row.append(_median_text(hit.iloc[0]) if len(hit) else "–")
            rows.append(row)
    if not rows:
        return []
    return [
        md_table(headers, rows, "lrr" + "r" * (len(headers) - 3)),
        "",
        "Scores: mean ± std over seeds of the final evaluation (whole dev set). Updates to a target: median over "
        "seeds, with how many seeds reached it; '>' when most did not (see 'Updates to target').",
        "",
    ]


def _median_text(cell: pd.Series) -> str:
    reached = f"{int(cell['reached'])}/{int(cell['n'])}"
    if bool(cell["median_censored"]):
        return f"> {int(cell['last_update'])} ({reached})"
    return f"{cell['median_update']:.0f} ({reached})"


def _answer_section(parts: dict[str, str], table: list[str]) -> list[str]:
    lines = [
        "## The answer",
        "",
        parts["question"],
        "",
        parts["answer"] + (" " + parts["cost"] if parts["cost"] else ""),
        "",
        parts["sanity"],
        "",
    ]
    return lines + table


def headline(runs: pd.DataFrame, paired: pd.DataFrame, sanity: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """The report's first section as markdown lines (also written alone as headline.md): the answer, then the
    headline table."""
    return _answer_section(answer(runs, paired, sanity, cells), headline_table(runs, cells))


def _targets_section(cells: pd.DataFrame) -> list[str]:
    lines = [
        "## Updates to target",
        "",
        "The first update at which a run's dev metric reached each target (dev F1 ≥ target, dev loss ≤ target); "
        "a run that never reached it counts as +∞ (right-censored: every run has the same budget). Median over "
        "seeds with the distribution-free order-statistic interval [x₍ⱼ₎, x₍ₙ₊₁₋ⱼ₎] and its coverage (below "
        "95 % with 5 or fewer seeds); examples and training seconds (the sum of train/step_time) at the median. "
        "Per-run values: `time_to_target.csv`.",
        "",
    ]
    if cells.empty:
        return lines + ["No evaluation events of completed runs.", ""]
    rows = []
    for r in cells.itertuples():
        ends = ["∞" if math.isinf(end) else f"{end:.0f}" for end in (r.ci_low, r.ci_high)]
        # one seed (coverage 0): no interval to give
        interval = f"[{ends[0]}, {ends[1]}] ({100 * r.ci_coverage:.0f} %)" if r.ci_coverage > 0 else "–"
        median = f"> {r.last_update}" if r.median_censored else f"{r.median_update:.0f}"
        examples = "–" if math.isinf(r.median_examples) else f"{r.median_examples:.0f}"
        seconds = "–" if math.isinf(r.median_seconds) or _isnan(r.median_seconds) else f"{r.median_seconds:.0f}"
        rows.append(
            (r.target_metric, f"{r.target:g}", r.arm, r.k, f"{r.reached}/{r.n}", median, interval, examples, seconds)
        )
    lines += [
        md_table(
            ["metric", "target", "arm", "k", "reached", "median updates", "interval", "examples", "train s"],
            rows,
            "lrlrrrrrr",
        ),
        "",
    ]
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# the document


def _setup_section(runs: pd.DataFrame, sweep: str, root: Path) -> list[str]:
    lines = ["## Setup", ""]
    done = completed_runs(runs)
    arms = arm_order(runs["arm"])
    ks = [int(k) for k in _values(runs["k"])]
    seeds = [int(s) for s in _values(runs["seed"])]
    cell_sizes = runs.groupby(["arm", "k"]).size()
    per_cell = _join([int(v) for v in sorted(set(cell_sizes.tolist()))])
    items = [
        ("Sweep", f"`{sweep}` ({_plural(len(runs), 'run')} in `{root}`)"),
        ("Model", _join([f"`{v}`" for v in _values(_col(runs, "model.name_or_path"))])),
    ]
    sources = _values(_col(runs, "data.source"))
    data_bits = [f"source {_join(sources)}"]
    if "generated" in sources:
        data_bits.append(
            f"generated set: {_join(_values(_col(runs, 'data.generated.n_train')))} train / "
            f"{_join(_values(_col(runs, 'data.generated.n_dev')))} dev questions"
        )
    for key in ("data.train_file", "data.validation_file", "data.hub_path"):
        vals = _values(_col(runs, key))
        if vals:
            data_bits.append(f"{key.split('.')[-1]}: {_join(vals)}")
    data_bits.append(
        f"max_seq_length {_join(_values(_col(runs, 'data.max_seq_length')))}, "
        f"doc_stride {_join(_values(_col(runs, 'data.doc_stride')))}"
    )
    stats = [
        (label, _values(_col(runs, f"data_stats.{key}")))
        for label, key in (
            ("train examples", "train_examples"),
            ("train features", "train_features"),
            ("dev examples", "dev_examples"),
            ("dev features", "dev_features"),
        )
    ]
    if any(vals for _, vals in stats):
        data_bits.append("; ".join(f"{label} {_join([int(v) for v in vals])}" for label, vals in stats if vals))
    items.append(("Data", "; ".join(data_bits)))
    items.append(
        (
            "Grid",
            f"{_plural(len(arms), 'arm')} ({_join(arms)}) × {_plural(len(ks), 'accumulation value')} "
            f"(k = {_join(ks)}) × {_plural(len(seeds), 'seed')} ({_join(seeds)}); "
            f"runs per cell: {per_cell}",
        )
    )
    mb = _values(_col(runs, "train.micro_batch_size"))
    budget = [
        f"epochs {_join(_values(_col(runs, 'train.epochs')))}",
        f"max_updates {_join(_values(_col(runs, 'train.max_updates')), empty='none (all epochs)')}",
        f"micro-batch {_join(mb)} (an update sees k × micro-batch examples)",
    ]
    if len(done) and "updates" in done.columns:
        per_k = done.groupby("k")["updates"].agg(["min", "max"])
        budget.append(
            "updates done per run: "
            + ", ".join(
                f"k={int(k)}: {int(r['min'])}" + (f"–{int(r['max'])}" if r["max"] != r["min"] else "")
                for k, r in per_k.iterrows()
                if not _isnan(r["min"])
            )
        )
    items.append(("Budget", "; ".join(budget)))
    optim = [
        f"{key.split('.')[-1]} {_join(_values(_col(runs, key)))}"
        for key in ("optim.lr", "optim.rho", "optim.weight_decay", "optim.warmup_ratio", "optim.max_grad_norm")
        if key in runs.columns
    ]
    items.append(("Optimizer", "AdamW base; " + "; ".join(optim)))
    devices = []
    as_text = lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)  # noqa: E731
    for name, dtype, threads in sorted(
        set(
            zip(
                _col(runs, "env.device.name").map(as_text),
                _col(runs, "env.device.type").map(as_text),
                _col(runs, "env.device.threads").map(as_text),
            )
        )
    ):
        if name in ("None", "nan"):
            continue
        devices.append(f"{name} ({dtype}" + (f", {threads} threads" if threads not in ("None", "nan") else "") + ")")
    items.append(("Hardware", _join(devices, empty="unknown (no env.json)")))
    shas = []
    for sha, dirty in sorted(set(zip(_col(runs, "env.git.sha").map(str), _col(runs, "env.git.dirty").map(str)))):
        if sha in ("None", "nan"):
            continue
        shas.append(f"`{sha[:12]}`" + (" (uncommitted changes)" if dirty == "True" else ""))
    items.append(("Code", _join(shas, empty="unknown")))
    pkgs = [
        f"{name} {_join(_values(_col(runs, f'env.packages.{name}')))}"
        for name in ("torch", "transformers")
        if f"env.packages.{name}" in runs.columns
    ]
    if "env.python" in runs.columns:
        pkgs.append(f"python {_join(_values(runs['env.python']))}")
    if pkgs:
        items.append(("Versions", "; ".join(pkgs)))
    lines += [f"- **{label}:** {text}" for label, text in items]
    varying = _varying_keys(runs)
    if varying:
        lines += ["", "Other config keys that differ between runs:", ""]
        lines += [f"- `{key}`: {_join(values)}" for key, values in varying]
    lines.append("")
    return lines


_GRID_KEYS = {
    "arm",
    "seed",
    "optim.replay",
    "train.accumulation_steps",
    "run_name",
    "results_dir",
    "sweep",
    "diagnostics.grad_fidelity",
}


def _varying_keys(runs: pd.DataFrame) -> list[tuple[str, list]]:
    out = []
    config_cols = [
        c
        for c in runs.columns
        if "." in c and c.split(".")[0] in ("data", "model", "optim", "train", "eval", "tracking", "diagnostics")
    ]
    for column in sorted(set(config_cols) - _GRID_KEYS):
        if column.startswith("tracking."):
            continue
        values = _values(runs[column].map(lambda v: v if not isinstance(v, (list, tuple)) else str(v)))
        if len(values) > 1:
            out.append((column, values))
    return out


def _clip(value: float, low: float, high: float) -> float:
    return value if _isnan(value) else min(max(value, low), high)


def _results_section(summary: pd.DataFrame) -> list[str]:
    lines = [
        "## Results",
        "",
        "Final metrics of completed runs per arm and accumulation k: mean ± standard deviation over seeds, "
        "and the 95% Student-t confidence interval of the mean (mean ± t₀.₉₇₅,ₙ₋₁·s/√n; none for n = 1), "
        "cut to the metric's range (scores 0–100, losses ≥ 0). `runs` counts the cell's runs in any status, "
        "`n` the completed ones.",
        "",
    ]
    for metric, label, spec in METRICS + OPTIONAL_METRICS:
        table = summary[summary["metric"] == metric]
        if table.empty:
            continue
        arrow = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
        lines += [f"### Final {label} ({arrow})", ""]
        low, high = metric_range(metric)
        rows = [
            (
                r.arm,
                r.k,
                r.runs,
                r.n,
                fmt(r.mean, spec) + ("" if _isnan(r.std) else f" ± {fmt(r.std, spec)}"),
                f"[{fmt(_clip(r.ci_low, low, high), spec)}, {fmt(_clip(r.ci_high, low, high), spec)}]",
            )
            for r in table.itertuples()
        ]
        lines += [md_table(["arm", "k", "runs", "n", "mean ± std", "95% CI"], rows, "lrrrrr"), ""]
    return lines


def _paired_section(paired: pd.DataFrame) -> list[str]:
    lines = [
        "## Paired differences",
        "",
        "Runs with the same seed share data order and initialisation, so each comparison a − b is taken seed "
        f"by seed (completed pairs only). CI: percentile bootstrap of the mean difference ({N_BOOT} resamples, "
        f"seed {BOOT_SEED}); p: paired t-test. For the losses a negative difference means a is better.",
        "",
    ]
    if paired.empty:
        return lines + ["No comparison possible: the sweep lacks the arms to compare.", ""]
    for a, b, what in COMPARISONS:
        block = paired[(paired["a"] == a) & (paired["b"] == b)]
        if block.empty:
            continue
        lines += [f"### {a} − {b} ({what})", ""]
        rows = []
        for r in block.itertuples():
            spec = _metric_fmt(r.metric)
            rows.append(
                (
                    _metric_label(r.metric),
                    r.k,
                    r.n,
                    fmt(r.mean_diff, spec, signed=True),
                    f"[{fmt(r.ci_low, spec, signed=True)}, {fmt(r.ci_high, spec, signed=True)}]",
                    fmt_p(r.p_value),
                    r.verdict,
                )
            )
        lines += [md_table(["metric", "k", "n", "mean diff", "95% CI", "p", "verdict"], rows, "lrrrrrl"), ""]
    return lines


def _sanity_section(sanity: pd.DataFrame) -> list[str]:
    lines = [
        "## Sanity check: k = 1",
        "",
        "With one micro-batch per update, full replay and last-batch replay run the same algorithm, so "
        "sam_full and sam_last must give the same numbers seed by seed: exactly for F1 and EM, within the "
        "tolerance for losses.",
        "",
    ]
    if sanity.empty or sanity["passed"].isna().all():
        return lines + ["Not checked: the sweep has no seed with completed sam_full and sam_last runs at k = 1.", ""]
    rows = []
    for r in sanity.itertuples():
        state = "–" if r.passed is None or _isnan(r.passed) else ("pass" if r.passed else "FAIL")
        rows.append(
            (
                r.metric,
                r.n,
                r.pairs or "–",
                fmt(r.max_abs_diff, ".3g"),
                "exact" if r.tol == 0 else f"≤ {r.tol:g}",
                state,
            )
        )
    lines += [md_table(["metric", "seeds", "seed list", "max abs diff", "required", "equal?"], rows, "lrlrll"), ""]
    return lines


def _figures_section(figures: dict[str, Path | None], out_dir: Path) -> list[str]:
    lines = ["## Figures", ""]
    skipped = []
    for name, path in figures.items():
        title, caption = FIGURE_TEXT[name]
        if path is None:
            skipped.append(f"- {title}: not drawn ({FIGURE_MISSING[name]}).")
            continue
        rel = path.relative_to(out_dir).as_posix()
        lines += [f"### {title}", "", f"![{title}]({rel})", "", caption, ""]
    if skipped:
        lines += ["Figures left out:", "", *skipped, ""]
    return lines


def _failures_section(rest: pd.DataFrame) -> list[str]:
    lines = ["## Failed, diverged and unfinished runs", ""]
    if rest.empty:
        return lines + ["None: every run completed.", ""]
    lines += ["These runs are not in the tables above (they have no final metrics to compare).", ""]
    rows = []
    for r in rest.itertuples():
        reason = "(no reason recorded)" if _isnan(r.reason) else str(r.reason).strip().splitlines()[0][:300]
        rows.append((f"`{r.run_id}`", r.arm, r.k, r.seed, r.status, reason))
    lines += [md_table(["run", "arm", "k", "seed", "status", "reason"], rows, "llrrll"), ""]
    return lines


def _demote_headings(text: str) -> str:
    """Shift every heading down one level (outside code fences), so a document's `#` title nests under `##`."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def find_sharpness(out_dir: Path) -> Path | None:
    """The sharpness section analysis.sharpness wrote for this report: `out_dir/sharpness.md` (never another sweep's:
    a report of sweep `foo` once embedded the default sweep's section from results/report/)."""
    path = out_dir / "sharpness.md"
    return path if path.is_file() else None


def _sharpness_section(path: Path | None) -> list[str]:
    """sharpness.md (written into the report's own folder, so its relative links work as they are) as a section of
    the report: its top heading becomes a level-2 heading (the others follow), or a "## Sharpness" heading is added
    when it has none."""
    if path is None:
        return []
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        return []
    if text.startswith("# "):
        text = _demote_headings(text)
    elif not text.startswith("## "):
        text = "## Sharpness\n\n" + text
    return [text, ""]


def build_markdown(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    sweep: str,
    root: Path,
    out_dir: Path,
    figures: dict[str, Path | None],
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    sanity: pd.DataFrame,
    sharpness: Path | None,
    cells: pd.DataFrame,
    first: list[str],
) -> str:
    """REPORT.md; `cells` is target_summary() of the runs, `first` the headline section (`headline`)."""
    lines = [
        f"# SAM under gradient accumulation — sweep `{sweep}`",
        "",
        "Generated by `python -m analysis.report` from the run directories; every number and every finding "
        "below is computed from them.",
        "",
    ]
    lines += first
    lines += ["## Findings", ""]
    lines += [f"- {text}" for text in findings(runs, curves, paired)]
    lines.append("")
    lines += _setup_section(runs, sweep, root)
    lines += _results_section(summary)
    lines += _targets_section(cells)
    lines += _paired_section(paired)
    lines += _sanity_section(sanity)
    lines += _figures_section(figures, out_dir)
    lines += _failures_section(not_completed(runs))
    lines += _sharpness_section(sharpness)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Markdown → self-contained HTML (the subset this report writes: headings, paragraphs, lists, pipe tables, images,
# code, emphasis, links)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.5; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; }
th { background: #f4f6f8; }
tr:nth-child(even) td { background: #fafafa; }
td.r, th.r { text-align: right; } td.c, th.c { text-align: center; }
code { background: #f2f2f2; padding: 1px 4px; border-radius: 3px; font-size: 0.92em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def _embed(src: str, base: Path) -> str | None:
    """A data URI for a local PNG (relative to the report folder), or None when there is no such file."""
    if re.match(r"^[a-z]+:", src):
        return None
    path = (base / src).resolve()
    if not path.is_file() or path.suffix.lower() != ".png":
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _inline(text: str, base: Path) -> str:
    """Inline Markdown → HTML: code spans first (their content stays literal), then images, links, bold, italics."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False).replace("\\|", "|")

        def image(m):
            alt, src = m.group(1), m.group(2)
            data = _embed(html.unescape(src), base)
            return f'<img alt="{alt}" src="{data or src}">'

        s = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", image, s)
        s = re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def _table_html(lines: list[str], base: Path) -> str:
    header = _split_row(lines[0])
    aligns = []
    for mark in _split_row(lines[1]):
        aligns.append(
            "r"
            if mark.endswith(":") and not mark.startswith(":")
            else "c"
            if mark.startswith(":") and mark.endswith(":")
            else "l"
        )
    cls = lambda i: f' class="{aligns[i]}"' if i < len(aligns) and aligns[i] != "l" else ""  # noqa: E731
    out = [
        "<table>",
        "<thead><tr>" + "".join(f"<th{cls(i)}>{_inline(h, base)}</th>" for i, h in enumerate(header)) + "</tr></thead>",
        "<tbody>",
    ]
    for line in lines[2:]:
        cells = _split_row(line)
        out.append("<tr>" + "".join(f"<td{cls(i)}>{_inline(c, base)}</td>" for i, c in enumerate(cells)) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def markdown_to_html(md: str, base: Path, title: str = "Report") -> str:
    """The report's Markdown as one self-contained HTML page; local PNG images become base64 data URIs."""
    lines = md.splitlines()
    body: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        if stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1 : j])) + "</code></pre>")
            i = j + 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2), base)}</h{level}>")
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?\s*:?-{3,}", lines[i + 1].strip()):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            body.append(_table_html([ln.strip() for ln in lines[i:j]], base))
            i = j
            continue
        image = re.match(r"^!\[([^\]]*)\]\(([^)\s]+)\)$", stripped)
        if image:
            alt, src = image.group(1), image.group(2)
            data = _embed(src, base)
            body.append(
                f'<figure><img alt="{html.escape(alt)}" src="{data or html.escape(src)}">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>"
            )
            i += 1
            continue
        if re.match(r"^([-*]|\d+\.)\s+", stripped):
            ordered = bool(re.match(r"^\d+\.", stripped))
            tag = "ol" if ordered else "ul"
            items = []
            while i < len(lines) and re.match(r"^([-*]|\d+\.)\s+", lines[i].strip()):
                item = re.sub(r"^([-*]|\d+\.)\s+", "", lines[i].strip())
                i += 1
                while (
                    i < len(lines)
                    and lines[i].startswith("  ")
                    and lines[i].strip()
                    and not re.match(r"^([-*]|\d+\.)\s+", lines[i].strip())
                ):
                    item += " " + lines[i].strip()
                    i += 1
                items.append(f"<li>{_inline(item, base)}</li>")
            body.append(f"<{tag}>" + "".join(items) + f"</{tag}>")
            continue
        if stripped.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(lines[i].strip()[1:].strip())
                i += 1
            body.append(f"<blockquote>{_inline(' '.join(quote), base)}</blockquote>")
            continue
        if re.match(r"^(-{3,}|\*{3,})$", stripped):
            body.append("<hr>")
            i += 1
            continue
        para = []
        while (
            i < len(lines)
            and lines[i].strip()
            and not re.match(r"^(#{1,6}\s|```|\||!\[|([-*]|\d+\.)\s+|>)", lines[i].strip())
        ):
            para.append(lines[i].strip())
            i += 1
        if not para:  # a line no rule above took (e.g. a lone "|"): keep it as text
            para.append(stripped)
            i += 1
        body.append(f"<p>{_inline(' '.join(para), base)}</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------------------------------
# entry points


def _runs_csv(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per run: enough for every table and figure of the report without the run directories (the notebook
    reads it on a clone that has the committed report but no raw runs)."""
    columns = [
        "run_id",
        "arm",
        "replay",
        "k",
        "seed",
        "status",
        "reason",
        "final.dev/f1",
        "final.dev/em",
        "final.dev/loss",
        "final.train/loss",
    ]
    columns += sorted(c for c in runs.columns if c.startswith("final.dev/") and c not in columns)
    columns += ["updates", "examples", "wall_time_s", "mean_step_time_s", "time.eval_share", "git_sha", "device"]
    return runs.reindex(columns=columns)


TARGET_CSV_COLUMNS = ["arm", "k", "seed", "target_metric", "target", "update", "examples", "seconds", "reached"]


def report_targets(results_dir: str | Path, sweep: str, metric: str = "dev/f1") -> dict:
    """The dev-metric targets of the updates-to-target tables: the sweep file's `report.targets` as sweep.json
    recorded it; without the run directories (a fresh clone) the ones the sweep's report used (its
    time_to_target.csv); else analysis.targets.DEFAULT_TARGETS, on `metric` (the primary score: dev/rouge_w for
    KLUE-MRC runs)."""
    manifest = read_json(sweep_dir(results_dir, sweep) / "sweep.json")
    if isinstance(manifest, dict) and isinstance(manifest.get("report"), dict) and manifest["report"].get("targets"):
        return manifest["report"]["targets"]
    used = report_dir(results_dir, sweep) / "time_to_target.csv"
    if not sweep_dir(results_dir, sweep).is_dir() and used.is_file():
        table = pd.read_csv(used)
        recorded = {
            name: sorted(group["target"].astype(float).unique()) for name, group in table.groupby("target_metric")
        }
        if recorded:
            return recorded
    return {metric: DEFAULT_TARGETS["dev/f1"]}  # the F1 targets, on the primary score


def build_report(results_dir: str | Path, sweep: str, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Collect, compute, draw and write the report of one sweep; returns {name: path} of what was written.
    Raises ReportError (one line) when the sweep folder is missing or holds no runs."""
    results_dir = Path(results_dir)
    root = sweep_dir(results_dir, sweep)
    out_dir = Path(out_dir) if out_dir is not None else report_dir(results_dir, sweep)
    try:
        runs = collect_runs(results_dir, sweep)
    except CollectError as err:
        raise ReportError(str(err)) from None
    if runs.empty:
        raise ReportError(f"no runs in {str(root)!r} (no folder with a summary.json or config.yaml, no sweep.json)")
    curves = collect_curves(results_dir, sweep, runs)
    to_target = time_to_target(curves, runs, report_targets(results_dir, sweep, primary_metric(runs)))
    cells = target_summary(to_target)

    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    for name in plots.FIGURES.values():  # a figure that is no longer drawn must not linger from an older report
        (fig_dir / name).unlink(missing_ok=True)
    figures = plots.plot_all(runs, curves, fig_dir, targets=to_target)

    summary = summary_table(runs, reported_metrics(runs))
    paired = paired_table(runs)
    sanity = sanity_table(runs, curves)
    sharpness = find_sharpness(out_dir)
    first = headline(runs, paired, sanity, cells)
    md = build_markdown(runs, curves, sweep, root, out_dir, figures, summary, paired, sanity, sharpness, cells, first)

    written = {}
    written["md"] = out_dir / "REPORT.md"
    written["md"].write_text(md, encoding="utf-8")
    written["html"] = out_dir / "REPORT.html"
    written["html"].write_text(
        markdown_to_html(md, out_dir, title=f"SAM accumulation report: {sweep}"), encoding="utf-8"
    )
    written["headline"] = out_dir / "headline.md"
    written["headline"].write_text("\n".join(first).rstrip() + "\n", encoding="utf-8")
    frames = (
        ("summary", summary),
        ("paired", paired),
        ("sanity", sanity),
        ("runs", _runs_csv(runs)),
        ("time_to_target", to_target[TARGET_CSV_COLUMNS]),
        ("time_to_target_summary", cells),
        ("curves", curves[curves["metric"].isin(REPORT_CURVE_METRICS)]),
    )
    for name, frame in frames:
        written[name] = out_dir / f"{name}.csv"
        frame.to_csv(written[name], index=False, lineterminator="\n")
    for name, path in figures.items():
        if path is not None:
            written[f"figure:{name}"] = path
    return written


def parse_args(argv: Sequence[str], usage: str = USAGE) -> dict[str, str]:
    """key=value arguments (results_dir, sweep, out) → {key: value}; ReportError for a malformed or unknown one,
    quoting `usage` (the calling command's)."""
    args = {"results_dir": "results", "sweep": "ablation", "out": None}
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ReportError(f"argument {arg!r} must look like key=value; {usage}")
        key, value = arg.split("=", 1)
        if key not in KNOWN_KEYS:
            raise ReportError(f"unknown key {key!r}; known keys: {', '.join(KNOWN_KEYS)}")
        if not value:
            raise ReportError(f"{key} needs a value ({key}=...)")
        args[key] = value
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        written = build_report(args["results_dir"], args["sweep"], args["out"])
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name in ("md", "html", "summary", "paired"):
        print(f"wrote {written[name]}")
    figures = [p for n, p in written.items() if n.startswith("figure:")]
    print(f"wrote {len(figures)} figures to {written['md'].parent / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
