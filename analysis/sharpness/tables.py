"""The tables of the sharpness section: per arm × k summaries, paired differences between arms and Kendall's
tau of every measure against the generalisation gap."""

import math
from typing import Any

import pandas as pd

from analysis.sharpness.options import SharpnessConfig
from analysis.stats import kendall_with_ci, paired_differences, summarize
from experiments.arms import SHARPNESS_DIFFERENCES
from experiments.metrics import keyed, select
from experiments.metrics import label as metric_label

TAU_N_BOOT = 2000  # bootstrap resamples for Kendall's tau
TAU_BOOT_SEED = 0
TAU_MIN_N = 10  # with fewer runs a Kendall tau is called uninformative whatever its interval


def measure_columns(opts: SharpnessConfig) -> list[tuple[str, str]]:
    """(column, label) of the sharpness measures, in table order; labels from experiments.metrics."""
    rhos = {"avg_sharpness_rho{rho}": opts.rhos_average, "worst_sharpness_rho{rho}": opts.rhos_worst}
    cols = []
    for row in select("sharpness", kind="sharpness"):
        keys = [keyed(row.key, r) for r in rhos[row.key]] if row.key in rhos else [row.key]
        cols += [(key, metric_label(key)) for key in keys]
    return cols


# the losses and gaps of sharpness.csv (experiments.metrics), and the two gaps the tau table ranks against
LOSS_COLUMNS = [(m.key, m.label) for m in select("sharpness") if m.kind in ("loss", "gap")]
GAPS = [(m.key, m.short) for m in select("sharpness", kind="gap")]


def tau_verdict(result: dict[str, Any]) -> str:
    """Whether a tau says anything: not below TAU_MIN_N runs, not when its CI spans 0, not when ties dominate."""
    n, tau, low, high = result["n"], result["tau"], result["ci_low"], result["ci_high"]
    if n < 2 or math.isnan(tau):
        return "undefined (a constant or missing measure)"
    notes = []
    if n < TAU_MIN_N:
        notes.append(f"n = {n} < {TAU_MIN_N}")
    if math.isnan(low) or (low <= 0 <= high):
        notes.append("CI spans 0")
    if result["pairs"] and max(result["ties_x"], result["ties_y"]) > result["pairs"] / 4:
        notes.append("over a quarter of the pairs tied")
    return ("uninformative (" + "; ".join(notes) + ")") if notes else "CI excludes 0"


def tau_table(frame, opts: SharpnessConfig):
    rows = []
    for column, label in measure_columns(opts):
        for gap, gap_label in GAPS:
            if column not in frame or gap not in frame:
                continue
            result = kendall_with_ci(frame[column], frame[gap], n_boot=TAU_N_BOOT, seed=TAU_BOOT_SEED)
            rows.append(
                {
                    "measure": column,
                    "label": label,
                    "gap": gap,
                    "gap_label": gap_label,
                    **result,
                    "verdict": tau_verdict(result),
                }
            )
    return pd.DataFrame(rows)


def summary_tables(frame, opts: SharpnessConfig):
    """(per arm × k mean and t CI of every measure, paired differences sam_full − adamw and sam_full − sam_last)."""
    columns = measure_columns(opts) + LOSS_COLUMNS
    summary = pd.concat(
        [summarize(frame, c, by=("arm", "k")) for c, _ in columns if frame[c].notna().any()], ignore_index=True
    )
    paired = []
    arms = set(frame["arm"])
    for a, b in SHARPNESS_DIFFERENCES:
        if a in arms and b in arms:
            for c, _ in measure_columns(opts) + [
                (m.key, m.label) for m in select("sharpness", kind="gap", paired=True)
            ]:
                if frame[c].notna().any():
                    paired.append(paired_differences(frame, c, a, b, by=("k",)))
    paired = pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()
    return summary, paired
