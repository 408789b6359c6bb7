"""analysis.stats' bootstrap CIs and Kendall's tau-b (scipy.stats.bootstrap, scipy.stats.kendalltau) against the
formulas they replaced, written out here: numpy resampling rng.integers(0, n, (n_boot, n)) from
np.random.default_rng(seed), np.percentile of the resampled statistics, and tau-b as a sum of sign products. The
committed tables (results/report*/paired.csv, the tau table of sharpness.md) were made with those formulas and their
runs cannot be redone, so the bootstrap intervals must agree bit for bit and tau within rounding (1e-12)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.stats import bootstrap_mean_ci, kendall_tau_b, kendall_with_ci

RNG = np.random.default_rng(2024)
SAMPLES = {
    "n=2": [0.3, -1.2],
    "n=3": [1.0, 2.0, 4.0],
    "constant": [2.0, 2.0, 2.0],
    "ties": [1.0, 1.0, 2.0, 2.0, 3.0],
    "n=10": list(RNG.normal(size=10)),
    "n=30": list(RNG.normal(size=30)),
    "integers": list(RNG.integers(0, 3, size=20).astype(float)),
}


def numpy_bootstrap_mean_ci(diffs, n_boot=10000, seed=0, level=0.95):
    """The percentile bootstrap of the mean as analysis.stats computed it before scipy.stats.bootstrap."""
    x = np.asarray(diffs, dtype=float)
    if x.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(int(n_boot), x.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


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


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("n_boot, seed, level", [(10000, 0, 0.95), (2000, 7, 0.95), (999, 3, 0.9), (2, 0, 0.95)])
def test_bootstrap_mean_ci_is_the_numpy_percentile_bootstrap_bit_for_bit(name, n_boot, seed, level):
    new = bootstrap_mean_ci(SAMPLES[name], n_boot=n_boot, seed=seed, level=level)
    old = numpy_bootstrap_mean_ci(SAMPLES[name], n_boot=n_boot, seed=seed, level=level)
    assert all(same(a, b) for a, b in zip(new, old)), (new, old)


@pytest.mark.parametrize("values", [[], [1.5]])
def test_bootstrap_mean_ci_of_fewer_than_two_values_is_nan(values):
    assert all(math.isnan(v) for v in bootstrap_mean_ci(values))


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
    got = (result["tau"], result["ci_low"], result["ci_high"])
    assert all(same(a, b, 1e-12) for a, b in zip(got, expected)), (got, expected)


def test_kendall_with_ci_counts_pairs_and_ties_and_gives_nan_below_three_runs():
    result = kendall_with_ci([1, 1, 2, 3, 3, 4], [0.5, 0.7, 0.7, 0.1, 2.0, 2.0])
    assert (result["n"], result["pairs"], result["ties_x"], result["ties_y"]) == (6, 15, 2, 2)
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
