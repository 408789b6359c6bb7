"""The report's tables: per-cell summaries, paired differences between arms and the k = 1 sanity checks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.collect import arm_order
from analysis.stats import (
    PAIRED_COLUMNS,
    curve_equality,
    equality_check,
    paired_differences,
    summarize,
)
from experiments.arms import BUGGY, COMPARISONS, CORRECT, SAME_AS_CORRECT_AT_K1
from experiments.metrics import NEITHER, PRIMARY, select
from experiments.metrics import metric as metric_row
from experiments.rundir import COMPLETED

# The report's metrics, from experiments.metrics: every evaluation metric, the train loss, as columns of collect_runs
# ("final.<key>"); the optional ones (KLUE-MRC's ROUGE-W, the SQuAD v2 breakdown) only when some run logged them.
# The first is the primary metric of the findings.
_REPORTED = [m for m in select("eval") if m.direction != NEITHER] + [metric_row("train/loss")]
METRICS = tuple(f"final.{m.key}" for m in _REPORTED if not m.optional)
OPTIONAL_METRICS = tuple(f"final.{m.key}" for m in _REPORTED if m.optional)
# the paired tests after the primary score (paired_metrics) and the k = 1 checks of the final metrics
PAIRED_METRICS = tuple(f"final.{m.key}" for m in select("eval", paired=True) if m.key != PRIMARY)
SANITY_METRICS = tuple(f"final.{m.key}" for m in _REPORTED if m.equal_at_k1 and not m.optional)


# ---------------------------------------------------------------------------------------------------------------------
# the numbers


def completed_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose status is completed (the only ones with final metrics to compare)."""
    return runs[runs["status"] == COMPLETED]


def _with_metrics(runs: pd.DataFrame, metrics: Iterable[str]) -> pd.DataFrame:
    """runs with every metric column present (all NaN when no run wrote it, e.g. a sweep where every run failed),
    so that the tables still show each grid cell with n = 0."""
    missing = [m for m in metrics if m not in runs.columns]
    return runs.assign(**{m: np.nan for m in missing}) if missing else runs


def reported_metrics(runs: pd.DataFrame) -> tuple[str, ...]:
    """METRICS, then each of OPTIONAL_METRICS that at least one run wrote."""
    optional = tuple(m for m in OPTIONAL_METRICS if m in runs.columns and runs[m].notna().any())
    return METRICS + optional


def primary_metric(runs: pd.DataFrame) -> str:
    """The score the answer is about: dev/f1, or dev/rouge_w for runs scored by KLUE-MRC's rules (data.metric=klue
    logs ROUGE-W instead of F1)."""

    def logged(metric: str) -> bool:
        return f"final.{metric}" in runs.columns and runs[f"final.{metric}"].notna().any()

    return "dev/rouge_w" if logged("dev/rouge_w") and not logged("dev/f1") else "dev/f1"


def summary_table(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
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
            table = paired_differences(done, metric, a, b, by=("k",))
            both = table["k"].map(lambda k, pair={a, b}: pair <= arms_at_k.get(k, set()))
            frames.append(table[both.astype(bool)])
    if not frames:
        return pd.DataFrame(columns=[*PAIRED_COLUMNS[:3], "k", *PAIRED_COLUMNS[3:]])
    out = pd.concat(frames, ignore_index=True)
    return out[["metric", "a", "b", "k", *[c for c in out.columns if c not in ("metric", "a", "b", "k")]]]


def sanity_table(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    a: str = CORRECT,
    others: Sequence[str] = SAME_AS_CORRECT_AT_K1,
    k: int = 1,
) -> pd.DataFrame:
    """The k = 1 equality checks of `a` against each arm of `others` that has runs at k (completed runs): the final
    metrics, and the whole train/loss curve. BUGGY's rows are always there (not checked when it has no run)."""
    runs = _with_metrics(runs, SANITY_METRICS)
    done = completed_runs(runs)
    at_k = set(done.loc[pd.to_numeric(done["k"], errors="coerce") == k, "arm"])
    rows = []
    for b in others:
        if b != BUGGY and b not in at_k:
            continue
        rows += [equality_check(done, metric, a=a, b=b, k=k) for metric in SANITY_METRICS]
        if not curves.empty:
            ok_ids = set(done["run_id"])
            rows.append(curve_equality(curves[curves["run_id"].isin(ok_ids)], "train/loss", a=a, b=b, k=k))
    return pd.DataFrame(
        rows, columns=["metric", "a", "b", "k", "n", "pairs", "unpaired", "max_abs_diff", "tol", "passed", "verdict"]
    )


def not_completed(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run whose status is not completed (failed, diverged, running, unknown), with its reason."""
    rest = runs[runs["status"] != COMPLETED]
    return rest[["run_id", "arm", "k", "seed", "status", "reason"]].reset_index(drop=True)
