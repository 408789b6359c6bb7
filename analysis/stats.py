"""Statistics of a sweep: group summaries with t confidence intervals, paired differences between arms over seeds,
and the accumulation-1 equality check.

Runs that share a seed share their data order and initialisation, so two arms are compared seed by seed (a paired
design): the difference a − b is taken within each seed. One test is declared for every such comparison, and said
once: the paired t-test on the per-seed differences (scipy.stats.ttest_rel), two-sided at the 5% level, with its own
95% interval, the Student-t interval of the mean difference mean ± t_{0.975, n−1}·s/√n. The interval excludes 0
exactly when p < 0.05, so a row can never say one thing with its interval and another with its test. (A percentile
bootstrap is not used for the means: over n = 3 seeds it has 10 distinct resamples and comes out too narrow.)
With the 3–5 seeds a CPU sweep affords the test is rough; every verdict says so when n < 5. The bootstrap below serves
Kendall's tau over the runs (kendall_with_ci), whose verdict needs at least 10 runs.

Which way a metric is better, its label and its verdict words come from experiments.metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.collect import arm_order
from experiments.arms import BUGGY, CORRECT
from experiments.metrics import EQUALITY_TOL, EXACT, lookup, words
from experiments.metrics import label as metric_label

LOW_POWER_N = 5  # below this many seeds (pairs) a verdict carries a low-power note
ALPHA = 0.05  # the paired t-test's level; its interval is the (1 − ALPHA) t-interval
TEST_NAME = "paired t-test"
BOOTSTRAP_MIN_N = 10  # a percentile bootstrap needs this many values (3 values have 10 distinct resamples)


def _as_tuple(by: Any) -> tuple:
    if by is None:
        return ()
    return (by,) if isinstance(by, str) else tuple(by)


def _resolve(df: pd.DataFrame, metric: str) -> str:
    """`metric` as a column of df: the name itself, or "final.<metric>" (so "dev/f1" finds final.dev/f1)."""
    if metric in df.columns:
        return metric
    if f"final.{metric}" in df.columns:
        return f"final.{metric}"
    raise KeyError(f"no column {metric!r} (nor final.{metric}) in the frame")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the Student-t interval mean ± t_{(1+level)/2, n-1} · s/√n; NaN bounds when n < 2."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = x.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return (mean, math.nan, math.nan)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return (mean, mean - half, mean + half)


def _sorted_groups(frame: pd.DataFrame, by: tuple) -> pd.DataFrame:
    """Sort a frame of group keys: arms in report order, everything else ascending."""
    if frame.empty or not by:
        return frame.reset_index(drop=True)
    keys = {}
    for column in by:
        if column == "arm":
            rank = {a: i for i, a in enumerate(arm_order(frame["arm"]))}
            keys[column] = frame["arm"].map(lambda a, rank=rank: rank.get(str(a), len(rank)))
        else:
            keys[column] = frame[column]
    order = pd.DataFrame(keys, index=frame.index).sort_values(list(by), kind="mergesort").index
    return frame.loc[order].reset_index(drop=True)


def summarize(df: pd.DataFrame, metric: str, by: Sequence[str] = ("arm", "k"), level: float = 0.95) -> pd.DataFrame:
    """Per group of `by`: n (non-missing values), mean, std (ddof=1), the t confidence interval ci_low, ci_high and
    its half width ci_half (NaN when n < 2). `metric` is a column (or the name after "final.", e.g. "dev/f1").
    NaN values (a run that never reached the metric) are not counted; filter the runs (e.g. status == completed)
    before calling if that is what the table should mean."""
    by = _as_tuple(by)
    column = _resolve(df, metric)
    values = pd.to_numeric(df[column], errors="coerce").astype(float)
    rows = []
    groups = df.assign(_v=values).groupby(list(by), sort=False, dropna=False) if by else [((), df.assign(_v=values))]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        x = group["_v"].dropna().to_numpy()
        mean, low, high = t_interval(x, level)
        rows.append(
            {
                **dict(zip(by, key)),
                "metric": metric,
                "n": int(x.size),
                "mean": mean,
                "std": float(np.std(x, ddof=1)) if x.size >= 2 else math.nan,
                "ci_low": low,
                "ci_high": high,
                "ci_half": (high - mean) if x.size >= 2 else math.nan,
            }
        )
    columns = [*by, "metric", "n", "mean", "std", "ci_low", "ci_high", "ci_half"]
    return _sorted_groups(pd.DataFrame(rows, columns=columns), by)


def _bootstrap_distribution(
    samples: tuple[np.ndarray, ...], statistic, n_boot: int, seed: int, paired: bool = False
) -> np.ndarray:
    """`statistic` of `n_boot` resamples (scipy.stats.bootstrap, percentile method): one vectorised batch whose
    indices are numpy's Generator seeded by `seed` drawing integers(0, n, (n_boot, n)), so the same inputs always give
    the same distribution. `paired`: the samples are resampled together (the same indices for each)."""
    with warnings.catch_warnings():
        # scipy warns when its own interval is NaN (a resample with an undefined statistic); the callers take the
        # percentiles themselves (_percentile_interval) and drop what they must
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        result = sps.bootstrap(
            samples,
            statistic,
            n_resamples=int(n_boot),
            paired=paired,
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return np.asarray(result.bootstrap_distribution, dtype=float)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 − level)/2 and (1 + level)/2 percentiles of `values` (np.percentile, linear interpolation).

    scipy.stats.bootstrap's own confidence_interval takes the same two quantiles with scipy.stats.quantile, whose
    interpolation rounds differently (up to ~1e-15 apart); np.percentile keeps the intervals bit for bit what the
    committed tables (results/report*/paired.csv, sharpness.md) were made with."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def paired_t(differences: Sequence[float], level: float = 1 - ALPHA) -> tuple[float, float, float]:
    """(p, low, high) of the paired t-test on the differences a − b and its interval, from one t statistic:
    t = mean / (s/√n) with n − 1 degrees of freedom, p = 2·P(T_{n−1} > |t|) (scipy.stats.ttest_1samp against 0, which
    is ttest_rel of the two arms), interval mean ± t_{(1+level)/2, n−1}·s/√n (t_interval). The interval excludes 0
    exactly when p < 1 − level. NaN everywhere when n < 2 or when every difference is the same (s = 0: no spread to
    test against; p = 1 and the interval [0, 0] when they are all 0)."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return (math.nan, math.nan, math.nan)
    if np.ptp(d) == 0:
        return (1.0, 0.0, 0.0) if d[0] == 0 else (math.nan, math.nan, math.nan)
    p = float(sps.ttest_1samp(d, 0.0).pvalue)
    _, low, high = t_interval(d, level)
    return (p, low, high)


def verdict(
    a: str,
    b: str,
    mean_diff: float,
    p_value: float,
    n: int,
    metric: str | None = None,
) -> str:
    """The plain-words reading of the paired t-test of a − b, in the words of `metric`'s row of experiments.metrics:
    a score "sam_full better (dev F1, p = 0.004)", a loss "sam_micro higher loss (dev loss, p = 0.01)", a sharpness
    measure "sam_full flatter (λmax, p = 0.02)", a metric without a direction "x higher lr (lr, p = 0.03)"; without
    a metric "a > b (p = 0.004)". Significant
    means p < ALPHA (so the row's t-interval excludes 0). A low-power note when n < LOW_POWER_N."""
    if n == 0:
        return "no pairs"
    if n < 2:
        return f"not enough pairs for a test (n={n})"
    if math.isnan(p_value):
        return f"{a} − {b} is the same on every pair: no spread to test against (n={n})"
    p = f"p = {p_value:.2g}"
    if p_value >= ALPHA:
        text = f"no significant difference ({TEST_NAME} {p})"
    else:
        higher = mean_diff > 0
        if metric is None:
            text = f"{a} {'>' if higher else '<'} {b} ({p})"
        else:
            word, what = words(metric)[0 if higher else 1], metric_label(metric)
            text = f"{a} {word} ({p})" if what in word else f"{a} {word} ({what}, {p})"
    if n < LOW_POWER_N:
        text += f" (n={n}: low power)"
    return text


def _paired_values(group: pd.DataFrame, column: str, a: str, b: str, pair_on: str, arm_col: str):
    """Aligned arrays of a's and b's values over the pair keys both have (non-missing), plus the keys of each kind."""
    values = {}
    for arm in (a, b):
        sub = group[group[arm_col] == arm]
        sub = sub.assign(_v=pd.to_numeric(sub[column], errors="coerce")).dropna(subset=["_v"])
        # two runs of one arm with the same seed (e.g. a rerun): the mean stands for that seed
        values[arm] = sub.groupby(pair_on, sort=True)["_v"].mean()
    shared = sorted(set(values[a].index) & set(values[b].index))
    only = sorted(set(values[a].index) ^ set(values[b].index))
    xa = values[a].reindex(shared).to_numpy(dtype=float)
    xb = values[b].reindex(shared).to_numpy(dtype=float)
    return xa, xb, shared, only


# The columns of paired_differences() after its group keys.
PAIRED_COLUMNS = (
    "metric",
    "a",
    "b",
    "n",
    "mean_diff",
    "std_diff",
    "ci_low",
    "ci_high",
    "p_value",
    "verdict",
    "pairs",
    "unpaired",
)


def paired_differences(
    df: pd.DataFrame,
    metric: str,
    a: str,
    b: str,
    by: Sequence[str] = ("k",),
    pair_on: str = "seed",
    arm_col: str = "arm",
    level: float = 1 - ALPHA,
) -> pd.DataFrame:
    """Per group of `by`: arm a against arm b on `metric`, paired on `pair_on` (the seed).

    Columns: by..., metric, a, b, n (pairs), mean_diff (mean of a − b), std_diff, ci_low, ci_high and p_value (the
    paired t-test and its t-interval at `level`, `paired_t`: the interval excludes 0 exactly when p < 1 − level),
    verdict (`verdict`, in the words of the metric's row of experiments.metrics), pairs (the paired keys,
    comma-separated) and unpaired (keys that only one arm has)."""
    by = _as_tuple(by)
    column = _resolve(df, metric)
    sub = df[df[arm_col].isin([a, b])]
    rows = []
    groups = sub.groupby(list(by), sort=False, dropna=False) if by else [((), sub)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        xa, xb, shared, only = _paired_values(group, column, a, b, pair_on, arm_col)
        d = xa - xb
        n = int(d.size)
        p, low, high = paired_t(d, level)
        rows.append(
            {
                **dict(zip(by, key)),
                "metric": metric,
                "a": a,
                "b": b,
                "n": n,
                "mean_diff": float(d.mean()) if n else math.nan,
                "std_diff": float(d.std(ddof=1)) if n >= 2 else math.nan,
                "ci_low": low,
                "ci_high": high,
                "p_value": p,
                "verdict": (
                    "no difference: identical on every pair"
                    if n and not np.any(d)
                    else verdict(a, b, float(d.mean()) if n else math.nan, p, n, metric if lookup(metric) else None)
                ),
                "pairs": ",".join(str(s) for s in shared),
                "unpaired": ",".join(str(s) for s in only),
            }
        )
    columns = [*by, *PAIRED_COLUMNS]
    return _sorted_groups(pd.DataFrame(rows, columns=columns), by)


def equality_check(
    df: pd.DataFrame,
    metric: str,
    a: str = CORRECT,
    b: str = BUGGY,
    k: int = 1,
    tol: float | None = None,
    pair_on: str = "seed",
    arm_col: str = "arm",
    k_col: str = "k",
) -> dict:
    """At accumulation k = 1 the arms a and b run the same algorithm, so each seed's `metric` must agree.

    tol: largest allowed |a − b| per seed; default 0 for a metric whose row in experiments.metrics says equal_at_k1
    EXACT (F1 and EM: counts on the same predictions), EQUALITY_TOL for the rest (losses: float rounding).
    Two NaNs (both diverged the same way) count as equal; one NaN as a mismatch.
    Returns {"metric", "a", "b", "k", "n", "pairs", "unpaired", "max_abs_diff", "tol", "passed", "verdict"};
    passed is None when no seed has both arms (nothing to check)."""
    column = _resolve(df, metric)
    if tol is None:
        row = lookup(metric)
        tol = 0.0 if row is not None and row.equal_at_k1 == EXACT else EQUALITY_TOL
    sub = df[(pd.to_numeric(df[k_col], errors="coerce") == k) & df[arm_col].isin([a, b])]
    values = {}
    for arm in (a, b):
        rows = sub[sub[arm_col] == arm]
        values[arm] = pd.to_numeric(rows[column], errors="coerce").groupby(rows[pair_on]).first()
    shared = sorted(set(values[a].index) & set(values[b].index))
    only = sorted(set(values[a].index) ^ set(values[b].index))
    diffs = []
    for key in shared:
        va, vb = float(values[a][key]), float(values[b][key])
        if math.isnan(va) and math.isnan(vb):
            diffs.append(0.0)
        elif math.isnan(va) or math.isnan(vb):
            diffs.append(math.inf)
        else:
            diffs.append(abs(va - vb))
    n = len(shared)
    max_diff = max(diffs) if diffs else math.nan
    passed = None if n == 0 else bool(max_diff <= tol)
    rule = "exactly equal" if tol == 0 else f"equal within {tol:g}"
    if passed is None:
        text = f"not checked: no seed has both {a} and {b} at k={k}"
    elif passed:
        text = f"pass: {a} and {b} are {rule} on all {n} seeds (max |diff| = {max_diff:.3g})"
    else:
        text = f"FAIL: {a} and {b} differ at k={k} (max |diff| = {max_diff:.3g}, allowed: {rule})"
    return {
        "metric": metric,
        "a": a,
        "b": b,
        "k": k,
        "n": n,
        "pairs": ",".join(str(s) for s in shared),
        "unpaired": ",".join(str(s) for s in only),
        "max_abs_diff": max_diff,
        "tol": tol,
        "passed": passed,
        "verdict": text,
    }


def curve_equality(
    curves: pd.DataFrame,
    metric: str = "train/loss",
    a: str = CORRECT,
    b: str = BUGGY,
    k: int = 1,
    tol: float = EQUALITY_TOL,
    pair_on: str = "seed",
) -> dict:
    """The k = 1 check on a whole learning curve: per seed, the largest |a − b| of `metric` over the updates both
    runs logged (a seed whose two curves have different lengths fails). Same return shape as `equality_check`,
    with metric "<metric> (every update)"."""
    data = curves[
        (curves["metric"] == metric) & (pd.to_numeric(curves["k"], errors="coerce") == k) & curves["arm"].isin([a, b])
    ]
    label = f"{metric} (every update)"
    diffs, shared, only = [], [], []
    keys = sorted(set(data[pair_on].dropna()))
    for key in keys:
        per_arm = {}
        for arm in (a, b):
            rows = data[(data[pair_on] == key) & (data["arm"] == arm)]
            # a metric logged at several events of one update (rare): the last one stands
            per_arm[arm] = rows.sort_values("update", kind="mergesort").groupby("update")["value"].last()
        if per_arm[a].empty or per_arm[b].empty:
            only.append(key)
            continue
        shared.append(key)
        if not per_arm[a].index.equals(per_arm[b].index):
            diffs.append(math.inf)
            continue
        va, vb = per_arm[a].to_numpy(dtype=float), per_arm[b].to_numpy(dtype=float)
        both_nan = np.isnan(va) & np.isnan(vb)
        d = np.where(both_nan, 0.0, np.abs(va - vb))
        diffs.append(float(np.nan_to_num(d, nan=math.inf).max()) if d.size else 0.0)
    n = len(shared)
    max_diff = max(diffs) if diffs else math.nan
    passed = None if n == 0 else bool(max_diff <= tol)
    if passed is None:
        text = f"not checked: no seed has {metric} curves of both {a} and {b} at k={k}"
    elif passed:
        text = (
            f"pass: the {metric} curves are equal within {tol:g} at every update on all {n} seeds "
            f"(max |diff| = {max_diff:.3g})"
        )
    else:
        text = (
            f"FAIL: the {metric} curves of {a} and {b} differ at k={k} (max |diff| = {max_diff:.3g}, allowed: {tol:g})"
        )
    return {
        "metric": label,
        "a": a,
        "b": b,
        "k": k,
        "n": n,
        "pairs": ",".join(str(s) for s in shared),
        "unpaired": ",".join(str(s) for s in only),
        "max_abs_diff": max_diff,
        "tol": tol,
        "passed": passed,
        "verdict": text,
    }


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long samples (scipy.stats.kendalltau, variant "b"): (concordant − discordant
    pairs) / sqrt(pairs untied in x · pairs untied in y); NaN when either sample is constant, has a NaN or has fewer
    than 2 values."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:  # scipy would warn that the sample is too small and give NaN too
        return math.nan
    return float(sps.kendalltau(x, y, variant="b").statistic)


def _tau_b_along_last_axis(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """tau-b of every pair of rows of two (B, n) arrays, n >= 3: the vectorised statistic scipy.stats.bootstrap calls.
    scipy loops over the rows (about 0.5 ms each); method="asymptotic" skips the exact p-value, which is not used and
    would cost a third more."""
    return sps.kendalltau(x, y, variant="b", method="asymptotic", axis=axis).statistic


def kendall_with_ci(
    x: Sequence[float], y: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """tau-b over the pairs where both values are finite, with a percentile bootstrap CI (the runs resampled with
    replacement, x and y together: scipy.stats.bootstrap with paired=True, numpy Generator seeded by `seed`;
    resamples with an undefined tau, e.g. all one run, are dropped before the percentiles), the number of pairs and
    the tied pairs in x and in y. NaN bounds with fewer than BOOTSTRAP_MIN_N pairs (too few distinct resamples for a
    percentile interval) or an undefined tau."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    pairs = n * (n - 1) // 2
    ties_x = int(sum((x[i] == x[i + 1 :]).sum() for i in range(n)))
    ties_y = int(sum((y[i] == y[i + 1 :]).sum() for i in range(n)))
    tau = kendall_tau_b(x, y)
    low = high = math.nan
    if n >= BOOTSTRAP_MIN_N and not math.isnan(tau):
        taus = _bootstrap_distribution((x, y), _tau_b_along_last_axis, n_boot, seed, paired=True)
        taus = taus[np.isfinite(taus)]
        if taus.size:
            low, high = _percentile_interval(taus, level)
    return {"n": n, "tau": tau, "ci_low": low, "ci_high": high, "pairs": pairs, "ties_x": ties_x, "ties_y": ties_y}
