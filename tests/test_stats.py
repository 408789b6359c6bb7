"""analysis.stats: the paired t-test with its own t-interval (hand-computed for tiny examples), and Kendall's tau-b
with its bootstrap CI (scipy.stats.bootstrap, scipy.stats.kendalltau) against the formulas they replaced, written out
here: numpy resampling rng.integers(0, n, (n_boot, n)) from np.random.default_rng(seed), np.percentile of the
resampled statistics, and tau-b as a sum of sign products. The tau table of sharpness.md was made with those formulas,
so the bootstrap intervals must agree bit for bit and tau within rounding (1e-12)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.stats import kendall_tau_b, kendall_with_ci, paired_differences, paired_t, verdict

RNG = np.random.default_rng(2024)


# ----------------------------------------------------------------------------------------- the one paired test
# For n = 3 (2 degrees of freedom) Student's t has a closed-form CDF, F(t) = 1/2 + t / (2·sqrt(2 + t²)), so the
# two-sided p-value is p = 1 − |t| / sqrt(2 + t²) and the critical value t_{0.975, 2} solves t / sqrt(2 + t²) = 0.95:
# t_crit = sqrt(2 · 0.95² / (1 − 0.95²)) = 4.302653.
T_CRIT_2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))


def test_the_closed_form_critical_value_is_scipys():
    from scipy import stats

    assert T_CRIT_2 == pytest.approx(stats.t.ppf(0.975, 2), rel=1e-12)


@pytest.mark.parametrize(
    "d, t, significant",
    [
        # mean 7/3, s = sqrt(7/3), s/√3 = sqrt(7)/3, t = sqrt(7): p = 1 − sqrt(7)/3 = 0.118 (not significant)
        ([1.0, 2.0, 4.0], math.sqrt(7.0), False),
        # mean 3, s = 1, s/√3 = 1/√3, t = 3·√3: p = 1 − 3√3/√29 = 0.0351 (significant)
        ([2.0, 3.0, 4.0], 3.0 * math.sqrt(3.0), True),
    ],
)
def test_paired_t_p_and_interval_by_hand_and_they_agree(d, t, significant):
    mean = sum(d) / 3
    se = mean / t  # s/√n, from t = mean / (s/√n)
    p, low, high = paired_t(d)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert (low, high) == pytest.approx((mean - T_CRIT_2 * se, mean + T_CRIT_2 * se), rel=1e-9)
    # one test: its interval excludes 0 exactly when p < 0.05
    assert (p < 0.05) is significant and (low > 0 or high < 0) is significant


def test_paired_differences_row_says_the_test_once_and_its_interval_agrees():
    # sam_full − adamw per seed: 1, 2, 4 on F1 (the first example above: p = 0.118, interval spans 0)
    frame = pd.DataFrame(
        {
            "arm": ["sam_full"] * 3 + ["adamw"] * 3,
            "seed": [0, 1, 2] * 2,
            "k": [8] * 6,
            "final.dev/f1": [61.0, 62.0, 64.0, 60.0, 60.0, 60.0],
        }
    )
    row = paired_differences(frame, "dev/f1", "sam_full", "adamw").iloc[0]
    t = math.sqrt(7.0)
    assert row["p_value"] == pytest.approx(1 - t / 3, rel=1e-9)  # sqrt(2 + 7) = 3
    assert row["ci_low"] == pytest.approx(7 / 3 - T_CRIT_2 * math.sqrt(7) / 3, rel=1e-9)
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["verdict"] == "no significant difference (paired t-test p = 0.12) (n=3: low power)"
    assert "bootstrap" not in row["verdict"] and "disagree" not in row["verdict"]


def test_verdict_words_follow_the_metric_table():
    # a score: better / worse
    assert verdict("sam_full", "sam_last", 3.0, 0.01, 5, "final.dev/f1") == "sam_full better (dev F1, p = 0.01)"
    assert verdict("sam_last", "sam_full", -3.0, 0.01, 5, "dev/f1") == "sam_last worse (dev F1, p = 0.01)"
    # a loss: lower / higher loss, never better / worse
    assert verdict("sam_full", "adamw", -0.2, 0.02, 3, "dev/loss") == (
        "sam_full lower loss (dev loss, p = 0.02) (n=3: low power)"
    )
    # a sharpness measure: flatter / sharper, never better / worse
    assert verdict("sam_full", "adamw", -5.0, 0.03, 5, "lambda_max") == "sam_full flatter (λmax, p = 0.03)"
    assert verdict("sam_full", "adamw", 0.01, 0.03, 5, "avg_sharpness_rho0.05") == (
        "sam_full sharper (average sharpness ρ=0.05, p = 0.03)"
    )
    # a gap: smaller / larger; a metric without a direction: higher / lower, no judgement
    assert verdict("a", "b", 0.05, 0.001, 5, "gap_subset").startswith("a larger gap (gap: dev − train loss")
    assert verdict("a", "b", 0.5, 0.001, 5, "train/grad_norm") == "a higher gradient norm (before clipping) (p = 0.001)"
    # not significant, too few pairs, no spread
    assert verdict("a", "b", 0.5, 0.2, 5, "dev/f1") == "no significant difference (paired t-test p = 0.2)"
    assert verdict("a", "b", 0.5, math.nan, 1, "dev/f1") == "not enough pairs for a test (n=1)"
    assert verdict("a", "b", 0.5, math.nan, 3, "dev/f1").startswith("a − b is the same on every pair")
    assert verdict("a", "b", 0.5, 0.001, 5) == "a > b (p = 0.001)"


def sign_tau_b_rows(x, y):
    """tau-b of every row pair of two (B, n) arrays: sum sgn(dx) sgn(dy) / sqrt(untied x pairs * untied y pairs)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # inf − inf and 0/0: NaN, as intended
        sx = np.sign(x[:, :, None] - x[:, None, :])
        sy = np.sign(y[:, :, None] - y[:, None, :])
        num = (sx * sy).sum(axis=(1, 2))
        den = np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def numpy_kendall_with_ci(x, y, n_boot=2000, seed=0, level=0.95):
    """(tau, ci_low, ci_high) as the sharpness CLI computed them before scipy: finite pairs only, the runs resampled
    together, resamples with an undefined tau dropped, np.percentile of the rest."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    tau = float(sign_tau_b_rows(x[None], y[None])[0]) if n >= 2 else math.nan
    low = high = math.nan
    if n >= 3 and not math.isnan(tau):
        index = np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))
        taus = sign_tau_b_rows(x[index], y[index])
        taus = taus[np.isfinite(taus)]
        if taus.size:
            tail = 100 * (1 - level) / 2
            low, high = (float(v) for v in np.percentile(taus, [tail, 100 - tail]))
    return tau, low, high


def same(a: float, b: float, tol: float = 0.0) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


PAIRS = {
    "n=2": ([1.0, 2.0], [2.0, 1.0]),
    "n=3": ([3.0, 1.0, 2.0], [1.0, 2.0, 3.0]),
    "n=3 ties": ([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]),
    "concordant": ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]),
    "discordant": ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
    "ties in both": ([1, 1, 2, 3, 3, 4], [0.5, 0.7, 0.7, 0.1, 2.0, 2.0]),
    "constant x": ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]),
    "nan dropped": ([1.0, math.nan, 3.0, 4.0, 2.0], [1.0, 2.0, 3.0, math.inf, 0.5]),
    "n=30 noisy": (np.arange(30.0), np.arange(30.0) + np.random.default_rng(0).normal(0, 1, 30)),
    "n=13 random": (RNG.normal(size=13), RNG.normal(size=13)),
    "n=16 integers": (RNG.integers(0, 3, 16).astype(float), RNG.integers(0, 4, 16).astype(float)),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_kendall_with_ci_is_the_paired_numpy_bootstrap_of_sign_tau_b(name):
    x, y = PAIRS[name]
    result = kendall_with_ci(x, y)
    expected = numpy_kendall_with_ci(x, y)
    if result["n"] < 10:  # no percentile bootstrap below 10 runs: tau alone
        expected = (expected[0], math.nan, math.nan)
    got = (result["tau"], result["ci_low"], result["ci_high"])
    assert all(same(a, b, 1e-12) for a, b in zip(got, expected)), (got, expected)


def test_kendall_with_ci_counts_pairs_and_ties_and_gives_no_interval_below_ten_runs():
    result = kendall_with_ci([1, 1, 2, 3, 3, 4], [0.5, 0.7, 0.7, 0.1, 2.0, 2.0])
    assert (result["n"], result["pairs"], result["ties_x"], result["ties_y"]) == (6, 15, 2, 2)
    assert math.isnan(result["ci_low"]) and math.isnan(result["ci_high"])  # 6 runs: no bootstrap interval
    two = kendall_with_ci([1.0, 2.0], [2.0, 1.0])
    assert two["tau"] == -1.0 and math.isnan(two["ci_low"]) and math.isnan(two["ci_high"])
    one = kendall_with_ci([1.0, math.nan], [1.0, 2.0])
    assert one["n"] == 1 and all(math.isnan(one[k]) for k in ("tau", "ci_low", "ci_high"))


@pytest.mark.parametrize("name", list(PAIRS))
def test_kendall_tau_b_is_the_sign_product_formula(name):
    x, y = (np.asarray(v, dtype=float) for v in PAIRS[name])
    assert same(kendall_tau_b(x, y), float(sign_tau_b_rows(x[None], y[None])[0]), 1e-12)


@pytest.mark.parametrize("x, y", [([], []), ([1.0], [2.0]), ([2.0, 2.0], [1.0, 3.0])])
def test_kendall_tau_b_is_nan_for_fewer_than_two_values_or_a_constant_sample(x, y):
    assert math.isnan(kendall_tau_b(x, y))
