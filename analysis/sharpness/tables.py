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


# a measure's column -> the boolean column that says whether its value may be used: lambda_max only when Lanczos
# converged (relative residual <= eigen_tol), the trace only when its standard error is small enough
# (qa.trace_is_reliable). A value whose flag is not True is marked † in every table and figure and left out of the
# means, the paired verdicts and Kendall's tau.
VALIDITY = {"lambda_max": "lambda_max_converged", "trace": "trace_reliable"}
MARK = "†"


def unusable(frame, column: str):
    """Boolean Series: the measured values of `column` whose validity flag is not True (False or missing)."""
    flag = VALIDITY.get(column)
    measured = pd.to_numeric(frame[column], errors="coerce").notna()
    if flag is None or flag not in frame:
        return measured & False
    return measured & ~frame[flag].map(lambda v: v is True or v == 1 or str(v) == "True")


def usable_frame(frame):
    """A copy of `frame` with every unusable value (see VALIDITY) set to NaN: what the means, verdicts and tau use."""
    out = frame.copy()
    for column in VALIDITY:
        if column in out:
            out.loc[unusable(frame, column), column] = math.nan
    return out


def left_out(frame, column: str, by: tuple = ()) -> dict:
    """{group key (tuple over `by`): count of unusable values of `column`} for the groups that have any."""
    bad = frame[unusable(frame, column)]
    if bad.empty:
        return {}
    if not by:
        return {(): len(bad)}
    return {tuple(k if isinstance(k, tuple) else (k,)): len(g) for k, g in bad.groupby(list(by), sort=False)}


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
    """Kendall tau of every measure against each gap over the usable values (VALIDITY); `left_out` counts the runs
    whose value was unusable."""
    rows = []
    usable = usable_frame(frame)
    for column, label in measure_columns(opts):
        for gap, gap_label in GAPS:
            if column not in frame or gap not in frame:
                continue
            result = kendall_with_ci(usable[column], usable[gap], n_boot=TAU_N_BOOT, seed=TAU_BOOT_SEED)
            rows.append(
                {
                    "measure": column,
                    "label": label,
                    "gap": gap,
                    "gap_label": gap_label,
                    **result,
                    "left_out": int(unusable(frame, column).sum()),
                    "verdict": tau_verdict(result),
                }
            )
    return pd.DataFrame(rows)


def summary_tables(frame, opts: SharpnessConfig):
    """(per arm × k mean and t CI of every measure, paired differences sam_full − adamw and sam_full − sam_last), both
    over the usable values only (VALIDITY): the summary gets a `left_out` column (unusable runs of the arm and k),
    the paired table one with the seeds of the group that lost their pair to an unusable value."""
    columns = measure_columns(opts) + LOSS_COLUMNS
    original, frame = frame, usable_frame(frame)
    # a measure whose every value is unusable keeps its rows (n = 0): the table then shows that it was left out
    measured = [c for c, _ in columns if pd.to_numeric(original[c], errors="coerce").notna().any()]
    summary = pd.concat([summarize(frame, c, by=("arm", "k")) for c in measured], ignore_index=True)
    summary["left_out"] = [
        left_out(original, m, ("arm", "k")).get((arm, int(k)), 0)
        for m, arm, k in zip(summary["metric"], summary["arm"], summary["k"])
    ]
    paired = []
    arms = set(frame["arm"])
    for a, b in SHARPNESS_DIFFERENCES:
        if a in arms and b in arms:
            paired_columns = measure_columns(opts) + [
                (m.key, m.label) for m in select("sharpness", kind="gap", paired=True)
            ]
            for c, _ in paired_columns:
                if c in measured:
                    table = paired_differences(frame, c, a, b, by=("k",))
                    table["left_out"] = [_lost_pairs(original, c, a, b, int(k)) for k in table["k"]]
                    paired.append(table)
    paired = pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()
    return summary, paired


def _lost_pairs(frame, column: str, a: str, b: str, k: int) -> int:
    """Seeds at this k that both arms ran but that lost their pair because a or b's value is unusable."""
    bad = unusable(frame, column)
    seeds = {}
    for arm in (a, b):
        mine = frame[(frame["arm"] == arm) & (frame["k"] == k)]
        seeds[arm] = (set(mine["seed"]), set(mine.loc[bad.loc[mine.index], "seed"]))
    both = seeds[a][0] & seeds[b][0]
    return len(both & (seeds[a][1] | seeds[b][1]))
