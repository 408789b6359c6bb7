"""Statistics of a sweep: group summaries with t confidence intervals, paired differences between arms over seeds,
and the accumulation-1 equality check.

Runs that share a seed share their data order and initialisation, so two arms are compared seed by seed (a paired
design): the difference a − b is taken within each seed, and its mean gets a bootstrap percentile CI and a paired
t-test. With the 3–5 seeds a CPU sweep affords, both are rough; every verdict says so when n < 5.
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

LOW_POWER_N = 5  # below this many seeds (pairs) a verdict carries a low-power note
# Metrics whose k=1 values must match exactly (counts of exact matches and token overlaps on the same predictions);
# every other metric (losses) is compared within EQUALITY_TOL.
EXACT_METRICS = ("dev/f1", "dev/em")
EQUALITY_TOL = 1e-6


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


def bootstrap_mean_ci(
    diffs: Sequence[float], n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `diffs` (scipy.stats.bootstrap: `n_boot` resamples with replacement,
    numpy Generator seeded by `seed`, so the same inputs always give the same interval). NaN bounds when fewer than
    2 values."""
    x = np.asarray(diffs, dtype=float)
    if x.size < 2:
        return (math.nan, math.nan)
    return _percentile_interval(_bootstrap_distribution((x,), np.mean, n_boot, seed), level)


def ci_and_test_disagree(low: float, high: float, p_value: float, alpha: float = 0.05) -> bool:
    """True when the CI [low, high] and the paired test's p-value reach opposite conclusions at level alpha (one
    excludes 0, the other does not). False when the p-value is NaN (no test)."""
    if math.isnan(p_value):
        return False
    return (low > 0 or high < 0) != (p_value < alpha)


def verdict(
    a: str,
    b: str,
    low: float,
    high: float,
    n: int,
    p_value: float = math.nan,
    higher_is_better: bool | None = None,
    label: str = "",
) -> str:
    """The plain-words reading of a CI of the mean difference a − b. When the paired t-test's p-value is given and
    disagrees with the CI at the 5% level (a percentile bootstrap over 3 seeds has only 10 distinct resamples and
    comes out too narrow), the verdict says so instead of letting the CI alone decide.

    With `higher_is_better` (and the metric's `label`) the verdict says which arm is better, e.g.
    "sam_micro worse (higher dev loss; CI excludes 0)": on a loss, a > b means a is worse."""
    if n == 0:
        return "no pairs"
    if n < 2 or math.isnan(low) or math.isnan(high):
        return f"not enough pairs for a CI (n={n})"
    if (low > 0 or high < 0) and higher_is_better is not None:
        higher = low > 0
        quality = "better" if higher == higher_is_better else "worse"
        text = f"{a} {quality} ({'higher' if higher else 'lower'} {label or 'value'}; CI excludes 0)"
    elif low > 0:
        text = f"{a} > {b} (CI excludes 0)"
    elif high < 0:
        text = f"{a} < {b} (CI excludes 0)"
    else:
        text = "no significant difference (CI spans 0)"
    if ci_and_test_disagree(low, high, p_value):
        text += f"; the paired t-test disagrees (p={p_value:.2g})"
    if n < LOW_POWER_N:
        text += f" (n={n}: low power)"
    return text


def _is_loss(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].endswith("loss")


def metric_label(metric: str) -> str:
    """ "final.dev/f1" → "dev F1", "final.dev/loss" → "dev loss": the words a sentence uses for a metric column."""
    name = metric.split(".", 1)[-1] if metric.startswith(("final.", "best.")) else metric
    split, _, what = name.rpartition("/")
    what = {"f1": "F1", "em": "EM", "rouge_w": "ROUGE-W"}.get(what, what.replace("_", " "))
    return f"{split} {what}".strip()


def metric_short(metric: str) -> str:
    """ "dev/f1" → "F1", "dev/rouge_w" → "ROUGE-W": metric_label without the split."""
    return metric_label(metric).split(" ", 1)[-1]


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: losses [0, ∞), scores (EM, F1, ROUGE-W, in %) [0, 100]."""
    return (0.0, math.inf) if _is_loss(metric) else (0.0, 100.0)


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
    n_boot: int = 10000,
    seed: int = 0,
    arm_col: str = "arm",
    level: float = 0.95,
) -> pd.DataFrame:
    """Per group of `by`: arm a against arm b on `metric`, paired on `pair_on` (the seed).

    Columns: by..., metric, a, b, n (pairs), mean_diff (mean of a − b), std_diff, ci_low, ci_high (bootstrap
    percentile CI of the mean difference, `n_boot` resamples from numpy's Generator seeded by `seed`, the same seed
    in every group), p_value (paired t-test, scipy.stats.ttest_rel; NaN when n < 2 or every difference is equal),
    verdict, pairs (the paired keys, comma-separated) and unpaired (keys that only one arm has)."""
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
        low, high = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed, level=level)
        p = math.nan
        if n >= 2 and np.ptp(d) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = float(sps.ttest_rel(xa, xb).pvalue)
        elif n >= 2:  # every difference the same: no variance to test against
            p = 1.0 if d[0] == 0 else math.nan
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
                    else verdict(
                        a, b, low, high, n, p, higher_is_better=not _is_loss(metric), label=metric_label(metric)
                    )
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

    tol: largest allowed |a − b| per seed; default 0 (exact) for dev/f1 and dev/em, EQUALITY_TOL for the rest.
    Two NaNs (both diverged the same way) count as equal; one NaN as a mismatch.
    Returns {"metric", "a", "b", "k", "n", "pairs", "unpaired", "max_abs_diff", "tol", "passed", "verdict"};
    passed is None when no seed has both arms (nothing to check)."""
    column = _resolve(df, metric)
    if tol is None:
        tol = 0.0 if any(metric.endswith(m) for m in EXACT_METRICS) else EQUALITY_TOL
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
    the tied pairs in x and in y. NaN bounds with fewer than 3 pairs or an undefined tau."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    pairs = n * (n - 1) // 2
    ties_x = int(sum((x[i] == x[i + 1 :]).sum() for i in range(n)))
    ties_y = int(sum((y[i] == y[i + 1 :]).sum() for i in range(n)))
    tau = kendall_tau_b(x, y)
    low = high = math.nan
    if n >= 3 and not math.isnan(tau):
        taus = _bootstrap_distribution((x, y), _tau_b_along_last_axis, n_boot, seed, paired=True)
        taus = taus[np.isfinite(taus)]
        if taus.size:
            low, high = _percentile_interval(taus, level)
    return {"n": n, "tau": tau, "ci_low": low, "ci_high": high, "pairs": pairs, "ties_x": ties_x, "ties_y": ties_y}
