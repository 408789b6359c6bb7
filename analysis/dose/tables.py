"""The numbers of the dose report: each run's role in the fixed-window design and the paired comparisons built on it.

A dose sweep (configs/sweep/dose.yaml) holds the window fixed at N examples per update and cuts it into k
micro-batches of N/k. Every run has one role (`roles`):

    reference   sam_full at k = 1 on batches of N: the correct update, the same at every k
    control     sam_full at k = 1 on batches of b < N: SAM on exactly the b = N/k examples a bug arm learns from
    sam_full    sam_full at k > 1 (the same algorithm as the reference: Q4)
    bug         sam_last or sam_last_only at k > 1 (Q1, Q2)
    micro       sam_micro at k > 1: m-SAM with m = N/k examples per perturbation (Q3)

Runs are paired on the seed: runs that share a seed share the initial weights and the order of the windows, so
the difference a − b within a seed removes what the seeds have in common. Every difference gets the paired t-test
and its t-interval (analysis.stats.paired_t: the interval excludes 0 exactly when p < 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.stats import paired_t
from analysis.targets import censored_median, time_to_target
from experiments.rundir import DONE_STATUSES

F1 = "final.dev/f1"
BUG_ARMS = ("sam_last", "sam_last_only")
ROLES = ("reference", "control", "sam_full", "bug", "micro")


class DoseError(ValueError):
    """The runs do not form a fixed-window dose sweep; the message is one line naming the run."""


def window_size(runs: pd.DataFrame) -> int:
    """N, the examples per update of the sweep: k × micro-batch of the runs at k > 1, which must all agree.
    Raises DoseError when there is no run at k > 1 or two windows differ."""
    deep = runs[runs["k"] > 1]
    if deep.empty:
        raise DoseError("no run with train.accumulation_steps > 1: a dose sweep needs k > 1")
    windows = deep["k"].astype(int) * deep["train.micro_batch_size"].astype(int)
    if windows.nunique() != 1:
        first = windows.iloc[0]
        odd = deep[windows != first].iloc[0]
        raise DoseError(
            f"run {odd['run_id']}: window {int(odd['k']) * int(odd['train.micro_batch_size'])} examples "
            f"(k × micro-batch), but {deep.iloc[0]['run_id']} has {int(first)}: a dose sweep holds the window fixed"
        )
    return int(windows.iloc[0])


def _role(arm: str, k: int, batch: int, n: int) -> str | None:
    if arm == "sam_full" and k == 1:
        return "reference" if batch == n else ("control" if batch < n else None)
    if k == 1:
        return None
    return {"sam_full": "sam_full", "sam_last": "bug", "sam_last_only": "bug", "sam_micro": "micro"}.get(arm)


def roles(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs (completed or diverged, with a final dev F1) with their place in the design.

    Columns: run_id, arm, k, batch (the micro-batch size), examples_per_gradient (how many examples the update's
    gradient averages: N for sam_full and sam_micro, N/k for the bug arms, b for the control), seed, role, f1, em.
    Runs with no role (adamw, a batch larger than N) are dropped. Raises DoseError (see window_size)."""
    n = window_size(runs)
    done = runs[runs["status"].isin(DONE_STATUSES)].copy()
    done["batch"] = done["train.micro_batch_size"].astype(int)
    done["k"] = done["k"].astype(int)
    done["role"] = [_role(a, k, b, n) for a, k, b in zip(done["arm"], done["k"], done["batch"])]
    done = done[done["role"].notna()]
    per_gradient = {"reference": n, "sam_full": n, "micro": n}
    done["examples_per_gradient"] = [
        per_gradient.get(role, batch if role == "control" else n // k)
        for role, batch, k in zip(done["role"], done["batch"], done["k"])
    ]
    out = pd.DataFrame(
        {
            "run_id": done["run_id"],
            "arm": done["arm"],
            "k": done["k"],
            "batch": done["batch"],
            "examples_per_gradient": done["examples_per_gradient"].astype(int),
            "seed": done["seed"].astype(int),
            "role": done["role"],
            "f1": pd.to_numeric(done[F1], errors="coerce"),
            "em": pd.to_numeric(done.get("final.dev/em"), errors="coerce"),
        }
    )
    return out.dropna(subset=["f1"]).sort_values(["role", "arm", "k", "batch", "seed"]).reset_index(drop=True)


def _by_seed(cells: pd.DataFrame, column: str) -> pd.Series:
    # a rerun of one cell and seed: its mean stands for that seed (as analysis.stats does)
    return cells.groupby("seed")[column].mean()


PAIR_COLUMNS = ["n", "a_mean", "b_mean", "diff", "ci_low", "ci_high", "p_value", "pairs"]


def pair(a: pd.Series, b: pd.Series) -> dict:
    """a − b over the seeds both have (Series indexed by seed): n, both means over those seeds, the mean difference,
    its paired t-interval and p (analysis.stats.paired_t), and the seeds used ("0,1,2")."""
    shared = sorted(set(a.dropna().index) & set(b.dropna().index))
    xa = a.reindex(shared).to_numpy(dtype=float)
    xb = b.reindex(shared).to_numpy(dtype=float)
    d = xa - xb
    p, low, high = paired_t(d)
    return {
        "n": len(shared),
        "a_mean": float(xa.mean()) if shared else math.nan,
        "b_mean": float(xb.mean()) if shared else math.nan,
        "diff": float(d.mean()) if shared else math.nan,
        "ci_low": low,
        "ci_high": high,
        "p_value": p,
        "pairs": ",".join(str(s) for s in shared),
    }


def _reference(cells: pd.DataFrame, column: str = "f1") -> pd.Series:
    return _by_seed(cells[cells["role"] == "reference"], column)


def gap_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Q1: sam_full (the reference, k = 1 on the same windows) − each bug arm at each k, final dev F1, per seed.
    Columns: arm, k, then PAIR_COLUMNS with a = the reference, b = the bug arm."""
    ref = _reference(cells)
    rows = []
    for (arm, k), group in cells[cells["role"] == "bug"].groupby(["arm", "k"], sort=True):
        rows.append({"arm": arm, "k": int(k), **pair(ref, _by_seed(group, "f1"))})
    return pd.DataFrame(rows, columns=["arm", "k", *PAIR_COLUMNS])


TREND_COLUMNS = ["arm", "n", "slope", "slope_low", "slope_high", "intercept", "p_value", "r"]


def gap_trend(cells: pd.DataFrame) -> pd.DataFrame:
    """The fitted trend of Q1: per bug arm, least squares of the per-seed gap (reference − bug arm) on log2 k,
    gap = intercept + slope · log2 k (scipy.stats.linregress), slope in F1 points per doubling of k with its
    95 % t-interval (slope ± t_{0.975, n−2} · stderr) and the p of slope = 0. NaN when fewer than 3 points or fewer
    than 2 values of k."""
    ref = _reference(cells)
    rows = []
    for arm, group in cells[cells["role"] == "bug"].groupby("arm", sort=True):
        x, y = [], []
        for k, at_k in group.groupby("k"):
            gaps = ref.reindex(at_k["seed"]).to_numpy(dtype=float) - at_k["f1"].to_numpy(dtype=float)
            for g in gaps[np.isfinite(gaps)]:
                x.append(math.log2(int(k)))
                y.append(float(g))
        if len(x) < 3 or len(set(x)) < 2:
            rows.append({"arm": arm, "n": len(x), **{c: math.nan for c in TREND_COLUMNS[2:]}})
            continue
        fit = sps.linregress(x, y)
        half = float(sps.t.ppf(0.975, len(x) - 2) * fit.stderr)
        rows.append(
            {
                "arm": arm,
                "n": len(x),
                "slope": float(fit.slope),
                "slope_low": float(fit.slope) - half,
                "slope_high": float(fit.slope) + half,
                "intercept": float(fit.intercept),
                "p_value": float(fit.pvalue),
                "r": float(fit.rvalue),
            }
        )
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


def control_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Q2: each bug arm at k − the control on batches of N/k examples (the same examples per update gradient), final
    dev F1, paired on the seed. Columns: arm, k, batch (N/k), then PAIR_COLUMNS with a = the bug arm, b = the
    control. A k whose control is missing gives n = 0."""
    control = cells[cells["role"] == "control"]
    rows = []
    for (arm, k), group in cells[cells["role"] == "bug"].groupby(["arm", "k"], sort=True):
        batch = int(group["examples_per_gradient"].iloc[0])
        mine = _by_seed(control[control["batch"] == batch], "f1")
        rows.append({"arm": arm, "k": int(k), "batch": batch, **pair(_by_seed(group, "f1"), mine)})
    return pd.DataFrame(rows, columns=["arm", "k", "batch", *PAIR_COLUMNS])


def versus_reference(cells: pd.DataFrame, role: str) -> pd.DataFrame:
    """Q3 (role "micro") and Q4 (role "sam_full"): the runs of `role` at each k − the reference, final dev F1, paired
    on the seed. Columns: arm, k, m (examples per perturbation, N/k), then PAIR_COLUMNS (a = the role's runs)."""
    ref = _reference(cells)
    rows = []
    for (arm, k), group in cells[cells["role"] == role].groupby(["arm", "k"], sort=True):
        rows.append({"arm": arm, "k": int(k), "m": int(group["batch"].iloc[0]), **pair(_by_seed(group, "f1"), ref)})
    return pd.DataFrame(rows, columns=["arm", "k", "m", *PAIR_COLUMNS])


# the sharpness measures of Q3, with the column that says the measurement can be used (analysis.sharpness)
SHARPNESS_MEASURES = {
    "lambda_max": "lambda_max_converged",
    "trace": "trace_reliable",
    "worst_sharpness_rho0.05": None,
    "avg_sharpness_rho0.05": None,
}


def sharpness_table(cells: pd.DataFrame, sharpness: pd.DataFrame | None) -> pd.DataFrame:
    """Q3's sharpness: sam_micro at each k − the reference on each measure of SHARPNESS_MEASURES at the final weights
    (sharpness.csv of analysis.sharpness), paired on the seed, only over runs whose measurement is usable (λmax:
    Lanczos converged; tr(H): its SE within the noise rule). Columns: arm, k, measure, used (runs usable / measured),
    then PAIR_COLUMNS. Empty when there is no sharpness.csv."""
    columns = ["arm", "k", "measure", "used", *PAIR_COLUMNS]
    if sharpness is None or sharpness.empty:
        return pd.DataFrame(columns=columns)
    merged = cells.merge(sharpness.drop(columns=["arm", "k", "seed"], errors="ignore"), on="run_id", how="inner")
    rows = []
    for measure, ok in SHARPNESS_MEASURES.items():
        if measure not in merged.columns:
            continue
        merged[measure] = pd.to_numeric(merged[measure], errors="coerce")
        usable = merged[merged[ok].astype(bool)] if ok in merged.columns else merged
        usable = usable.dropna(subset=[measure])
        ref = _by_seed(usable[usable["role"] == "reference"], measure)
        n_ref = int((merged["role"] == "reference").sum())
        for (arm, k), measured in merged[merged["role"] == "micro"].groupby(["arm", "k"], sort=True):
            group = usable[(usable["role"] == "micro") & (usable["arm"] == arm) & (usable["k"] == k)]
            used = f"{len(group) + len(ref)}/{len(measured) + n_ref}"
            rows.append(
                {"arm": arm, "k": int(k), "measure": measure, "used": used, **pair(_by_seed(group, measure), ref)}
            )
    return pd.DataFrame(rows, columns=columns)


COS_COLUMNS = ["k", "runs", "points", "cos_mean", "cos_min", "cos_max", "floor", "snr", "ratio_mean", "product_mean"]


def expected_cos(k: float, snr: float) -> float:
    """The cosine between the last micro-batch's gradient and the window's under i.i.d. example gradients with mean
    μ and per-example noise of total variance σ² (high dimension, so a dot product is its mean):
    cos = √((s + 1)/(s + k)) with s = N‖μ‖²/σ², the window gradient's signal-to-noise ratio. It is 1/√k as s → 0
    (pure noise) and 1 as s → ∞; see the report's method note for the derivation."""
    return math.sqrt((snr + 1.0) / (snr + k))


def implied_snr(k: float, cos: float) -> float:
    """s of expected_cos solved for a measured cosine: s = (k·cos² − 1)/(1 − cos²); NaN for cos outside (0, 1)."""
    if not 0.0 < cos < 1.0:
        return math.nan
    return (k * cos * cos - 1.0) / (1.0 - cos * cos)


def grad_cos_table(curves: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """cos(g_last, g_full) of the gradient-fidelity diagnostic (sam.diagnostics) per k over the sam_last runs: its
    mean, min and max over every logged window and seed, the pure-noise floor 1/√k, the signal-to-noise ratio s that
    the mean cosine implies (implied_snr), and the mean of ‖g_last‖/‖g_full‖ and of cos × that ratio (the model of
    expected_cos predicts a ratio of 1/cos, so a product of 1). Columns: COS_COLUMNS."""
    ids = set(cells.loc[(cells["arm"] == "sam_last") & (cells["role"] == "bug"), "run_id"])
    diag = curves[curves["run_id"].isin(ids) & curves["metric"].isin(["diag/grad_cos", "diag/grad_norm_ratio"])]
    if diag.empty:
        return pd.DataFrame(columns=COS_COLUMNS)
    wide = diag.pivot_table(index=["run_id", "k", "update"], columns="metric", values="value").reset_index()
    rows = []
    for k, group in wide.groupby("k", sort=True):
        cos = group["diag/grad_cos"].to_numpy(dtype=float)
        ratio = group["diag/grad_norm_ratio"].to_numpy(dtype=float) if "diag/grad_norm_ratio" in group else None
        rows.append(
            {
                "k": int(k),
                "runs": group["run_id"].nunique(),
                "points": len(cos),
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
                "cos_max": float(cos.max()),
                "floor": 1.0 / math.sqrt(int(k)),
                "snr": implied_snr(int(k), float(cos.mean())),
                "ratio_mean": float(ratio.mean()) if ratio is not None else math.nan,
                "product_mean": float((cos * ratio).mean()) if ratio is not None else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=COS_COLUMNS)


TARGET_COLUMNS = ["role", "arm", "k", "batch", "target", "n", "reached", "median_update", "low", "high"]


def updates_to_target(
    curves: pd.DataFrame, runs: pd.DataFrame, cells: pd.DataFrame, targets: Sequence[float]
) -> pd.DataFrame:
    """Q1's other measure: per cell of the design (role, arm, k, batch) and dev-F1 target, how many runs reached it
    within the budget and the median update at which they did (analysis.targets: a run that never reaches it counts
    as +∞, so the median is infinite when half or more did not), with the seeds' [min, max] (low, high; +∞ when
    censored). Columns: TARGET_COLUMNS."""
    table = time_to_target(curves, runs, {"dev/f1": tuple(targets)})
    if table.empty:
        return pd.DataFrame(columns=TARGET_COLUMNS)
    table = table.drop(columns=["arm", "k", "seed"]).merge(cells, on="run_id", how="inner")
    rows = []
    for (role, arm, k, batch, target), group in table.groupby(["role", "arm", "k", "batch", "target"], sort=True):
        values = np.where(group["reached"].to_numpy(bool), group["update"].to_numpy(dtype=float), math.inf)
        rows.append(
            {
                "role": role,
                "arm": arm,
                "k": int(k),
                "batch": int(batch),
                "target": float(target),
                "n": len(values),
                "reached": int(np.isfinite(values).sum()),
                "median_update": censored_median(values),
                "low": float(values.min()),
                "high": float(values.max()),
            }
        )
    return pd.DataFrame(rows, columns=TARGET_COLUMNS)


def dev_curves(curves: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The dev-F1 learning curves of every run with a role: run_id, role, arm, k, batch, examples_per_gradient, seed,
    update, value (periodic and final evaluations; the final one replaces a periodic one at the same update)."""
    f1 = curves[(curves["metric"] == "dev/f1") & curves["run_id"].isin(set(cells["run_id"]))]
    f1 = f1.sort_values(["run_id", "update", "time"], kind="mergesort")
    f1 = f1.drop_duplicates(["run_id", "update"], keep="last")
    keep = ["run_id", "role", "arm", "k", "batch", "examples_per_gradient", "seed"]
    return f1[["run_id", "update", "value"]].merge(cells[keep], on="run_id").reset_index(drop=True)


def summaries(cells: pd.DataFrame) -> Mapping[str, pd.DataFrame]:
    """Every table of the report by name (the CSV files' names): gap, trend, control, micro, invariance."""
    return {
        "gap": gap_table(cells),
        "trend": gap_trend(cells),
        "control": control_table(cells),
        "micro": versus_reference(cells, "micro"),
        "invariance": versus_reference(cells, "sam_full"),
    }
