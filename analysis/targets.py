"""Updates-to-target: how many optimizer updates (and examples, and training seconds) a run needs before its dev
metric first reaches a target. This is the measure of what the last-batch replay bug costs: the buggy arm gets
there later, or not at all within the budget.

    table = time_to_target(curves, runs, {"dev/f1": (50, 80, 90), "dev/loss": (1.0, 0.5)})   # one row per run × target
    cells = target_summary(table)          # per arm × k × metric × target: median, interval, reached/n
    ratio = cost_ratio(cells, "sam_last", "sam_full", k=8, metric="dev/f1", target=90)

Rules
- A run reaches a target at its first evaluation (in update order) whose value is >= the target for a metric that
  is better higher (scores: dev/f1, dev/em) and <= the target for one that is better lower (dev/loss): the
  direction of its row in experiments.metrics. Evaluations of the dev subset count like those of the
  whole dev set: both estimate the same dev score, and the learning curve is drawn from both.
- update, examples: the step keys of that evaluation; seconds: the sum of `train/step_time` over the updates up to
  and including it (training compute only, so a different evaluation schedule does not change it).
- A run that never reaches the target is right-censored: reached = False and update/examples/seconds are those of
  its last evaluation, a lower bound. Completed and diverged runs count (a diverged run never reaches anything);
  failed and unfinished runs are left out, because their censoring point is not the budget.
- Median over seeds with censoring: a censored run counts as +∞. Every run of a cell has the same budget, so a
  censored run is slower than every run that reached the target within it, and this is exactly the Kaplan-Meier
  median; it is finite when more than half of the runs reached the target, else reported as "> last update".
- Interval: the distribution-free interval for a median from order statistics, [x_(j), x_(n+1-j)] with the largest
  j whose coverage 1 − 2·P(Bin(n, ½) < j) is at least 95 % (Hollander, Wolfe & Chicken, Nonparametric Statistical
  Methods, §3.6); with n <= 5 no j reaches 95 % and j = 1 ([min, max]) is reported with its real coverage
  (75 % at n = 3, 93.75 % at n = 5). An upper end that is censored is +∞.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from experiments.metrics import METRICS
from experiments.metrics import metric as metric_row
from experiments.rundir import DONE_STATUSES

# the default targets of experiments.metrics (a sweep file's report.targets overrides them)
DEFAULT_TARGETS: dict[str, tuple[float, ...]] = {m.key: m.targets for m in METRICS if m.targets}
TABLE_COLUMNS = ["run_id", "arm", "k", "seed", "target_metric", "target", "update", "examples", "seconds", "reached"]
CELL_COLUMNS = [
    "arm",
    "k",
    "target_metric",
    "target",
    "n",
    "reached",
    "median_update",
    "median_censored",
    "ci_low",
    "ci_high",
    "ci_coverage",
    "median_examples",
    "median_seconds",
    "last_update",
]


def _reaches(key: str, value: float, target: float) -> bool:
    return metric_row(key).reaches(value, target)


def time_to_target(
    curves: pd.DataFrame, runs: pd.DataFrame, targets: Mapping[str, Sequence[float]] = DEFAULT_TARGETS
) -> pd.DataFrame:
    """One row per (run, metric, target): the first update at which the run's dev metric reached the target.

    curves: the long frame of analysis.collect.collect_curves; runs: the frame of collect_runs (for status).
    Returns the columns TABLE_COLUMNS (see the module docstring for the rules).
    """
    counted = runs[runs["status"].isin(DONE_STATUSES)]
    ids = set(counted["run_id"])
    rows = []
    if curves.empty or not ids:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    mine = curves[curves["run_id"].isin(ids)]
    step_times = mine[mine["metric"] == "train/step_time"]
    cumulative = {
        run_id: frame.groupby("update")["value"].sum().sort_index().cumsum()
        for run_id, frame in step_times.groupby("run_id")
    }
    for run_id, frame in mine.groupby("run_id", sort=True):
        info = frame.iloc[0]
        seconds_by_update = cumulative.get(run_id, pd.Series(dtype=float))
        for metric, values in targets.items():
            evals = frame[frame["metric"] == metric].sort_values(["update", "time"], kind="mergesort")
            if evals.empty:
                continue
            points = list(evals.itertuples())
            for target in values:
                hit = next((e for e in points if _reaches(metric, e.value, float(target))), None)
                event = hit if hit is not None else points[-1]
                update = int(event.update)
                done = seconds_by_update[seconds_by_update.index <= update]
                rows.append(
                    (
                        run_id,
                        info["arm"],
                        info["k"],
                        info["seed"],
                        metric,
                        float(target),
                        update,
                        int(event.examples),
                        float(done.iloc[-1]) if len(done) else math.nan,
                        hit is not None,
                    )
                )
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for column in ("k", "seed", "update", "examples"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    return table.sort_values(["target_metric", "target", "arm", "k", "seed"], kind="mergesort").reset_index(drop=True)


def median_interval(n: int, level: float = 0.95) -> tuple[int, float]:
    """(j, coverage) of the order-statistic interval [x_(j), x_(n+1-j)] for the median of n values (1-based j)."""
    best_j, best_cov = 1, 1 - 2 * stats.binom.cdf(0, n, 0.5)
    for j in range(1, n // 2 + 1):
        coverage = 1 - 2 * stats.binom.cdf(j - 1, n, 0.5)
        if coverage >= level:
            best_j, best_cov = j, coverage
    return best_j, float(best_cov)


def censored_median(values: np.ndarray) -> float:
    """Median with +∞ for censored runs (np.median of a sorted array with inf at the top)."""
    ordered = np.sort(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    if n % 2:
        return float(ordered[n // 2])
    low, high = ordered[n // 2 - 1], ordered[n // 2]
    return float(high) if math.isinf(high) else float((low + high) / 2)


def target_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm × k × metric × target: n runs, how many reached, the censoring-aware median update (with its
    order-statistic interval and coverage), the median examples and training seconds (+∞ when the median is
    censored) and the last update evaluated (the censoring point)."""
    rows = []
    if table.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    for (arm, k, metric, target), cell in table.groupby(["arm", "k", "target_metric", "target"], sort=False):
        reached = cell["reached"].astype(bool).to_numpy()
        censored = {
            c: np.where(reached, cell[c].astype(float).to_numpy(), np.inf) for c in ("update", "examples", "seconds")
        }
        updates = censored["update"]
        n = len(updates)
        j, coverage = median_interval(n)
        ordered = np.sort(updates)
        median = censored_median(updates)
        rows.append(
            (
                arm,
                k,
                metric,
                target,
                n,
                int(reached.sum()),
                median,
                math.isinf(median),
                float(ordered[j - 1]),
                float(ordered[n - j]),
                coverage,
                censored_median(censored["examples"]),
                censored_median(censored["seconds"]),
                int(cell["update"].max()),
            )
        )
    out = pd.DataFrame(rows, columns=CELL_COLUMNS)
    out["k"] = pd.to_numeric(out["k"], errors="coerce").astype("Int64")
    return out


def cost_ratio(cells: pd.DataFrame, slow: str, fast: str, k: int, metric: str, target: float) -> dict:
    """How many times the updates of `fast` the arm `slow` needs to reach the target at k (median over seeds).

    Returns {"ratio", "lower_bound" (True when slow's median is censored, so the ratio is "> ratio"),
    "slow_median", "fast_median", "slow_reached", "slow_n", "fast_reached", "fast_n", "slow_budget" (slow's last
    evaluated update), "target", "text"}; ratio NaN when `fast` itself did not reach the target in more than half
    its runs.
    """

    def cell(arm):
        rows = cells[
            (cells["arm"] == arm)
            & (cells["k"] == k)
            & (cells["target_metric"] == metric)
            & (cells["target"].astype(float) == float(target))
        ]
        return rows.iloc[0] if len(rows) else None

    s, f = cell(slow), cell(fast)
    out = {
        "ratio": math.nan,
        "lower_bound": False,
        "slow_median": math.nan,
        "fast_median": math.nan,
        "slow_reached": 0,
        "slow_n": 0,
        "fast_reached": 0,
        "fast_n": 0,
        "slow_budget": None,
        "target": float(target),
        "text": "",
    }
    if s is None or f is None:
        out["text"] = f"no {metric} target {target:g} cell for {slow} and {fast} at k={k}"
        return out
    out.update(
        slow_reached=int(s["reached"]),
        slow_n=int(s["n"]),
        fast_reached=int(f["reached"]),
        fast_n=int(f["n"]),
        slow_median=float(s["median_update"]),
        fast_median=float(f["median_update"]),
        slow_budget=int(s["last_update"]),
    )
    if bool(f["median_censored"]):
        out["text"] = f"{fast} did not reach {metric} {target:g} in most runs at k={k}: no ratio"
        return out
    if bool(s["median_censored"]):
        out.update(ratio=float(s["last_update"]) / float(f["median_update"]), lower_bound=True)
        out["text"] = (
            f"{slow} needs more than {out['ratio']:.1f}× the updates of {fast} to reach {metric} "
            f"{target:g} at k={k}: {fast} in a median {f['median_update']:.0f} updates "
            f"({int(f['reached'])}/{int(f['n'])} runs), {slow} in only {int(s['reached'])}/{int(s['n'])} "
            f"runs within the budget of {int(s['last_update'])} updates"
        )
        return out
    out["ratio"] = float(s["median_update"]) / float(f["median_update"])
    out["text"] = (
        f"{slow} needs {out['ratio']:.1f}× the updates of {fast} to reach {metric} {target:g} at k={k} "
        f"(median {s['median_update']:.0f} against {f['median_update']:.0f} updates; reached by "
        f"{int(s['reached'])}/{int(s['n'])} and {int(f['reached'])}/{int(f['n'])} runs)"
    )
    return out
