"""The words of the dose report: the headline (one sentence per question, each with its effect size, 95 % interval
and p, generated from the tables; no claim is written in advance) and DOSE.md's sections."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from analysis.report.formatting import fmt, md_table, p_clause
from analysis.stats import ALPHA

# what the m-sharpness papers report, in direction only (the question Q3 puts to extractive QA)
LITERATURE = (
    "Andriushchenko & Flammarion (2022, *Towards Understanding Sharpness-Aware Minimization*, ICML) implement "
    "m-sharpness by gradient accumulation and find smaller m generalizing better than whole-batch SAM; Behdin et al. "
    "(2023, *mSAM: Micro-Batch-Averaged Sharpness-Aware Minimization*) and Foret et al. (2021, per-accelerator SAM) "
    "report m-SAM above whole-batch SAM on vision and NLP"
)


def effect(row: Mapping, unit: str = "F1", where: str = "") -> str:
    """ "+12.34 F1 at k = 4 (95 % CI [4.10, 20.58], p = 0.021, n = 3)" (`unit`, then `where`, after the number);
    without an interval when n < 2."""
    diff = " ".join(part for part in (fmt(row["diff"], ".2f", signed=True), unit, where) if part)
    if row["n"] < 2 or math.isnan(row["ci_low"]):
        return f"{diff} (n = {row['n']}: no interval)"
    ci = f"[{fmt(row['ci_low'], '.2f')}, {fmt(row['ci_high'], '.2f')}]"
    return f"{diff} (95 % CI {ci}, {p_clause(row['p_value'])}, n = {row['n']})"


def significant(row: Mapping) -> bool:
    return row["n"] >= 2 and not math.isnan(row["p_value"]) and row["p_value"] < ALPHA


def _by_k(rows: pd.DataFrame) -> str:
    return ", ".join(effect(r, where=f"at k = {r['k']}") for r in rows.to_dict("records"))


def q1_sentence(gap: pd.DataFrame, trend: pd.DataFrame, n: int) -> str:
    if gap.empty:
        return "**Q1, the gap against k:** no bug-arm run finished."
    parts = []
    for arm, rows in gap.groupby("arm", sort=True):
        fit = trend[trend["arm"] == arm]
        text = f"sam_full − {arm} is {_by_k(rows)}"
        if not fit.empty and not math.isnan(fit["slope"].iloc[0]):
            f = fit.iloc[0]
            slope = (
                f"{fmt(f['slope'], '.2f', signed=True)} F1 per doubling of k "
                f"(95 % CI [{fmt(f['slope_low'], '.2f')}, {fmt(f['slope_high'], '.2f')}], {p_clause(f['p_value'])})"
            )
            text += (
                f", and a line in log2 k fits it with slope {slope}"
                if f["p_value"] < ALPHA
                else f", with no clear trend in log2 k (slope {slope})"
            )
        parts.append(text)
    return f"**Q1, the gap against k** (window N = {n} examples, final dev F1): " + "; and ".join(parts) + "."


def q2_sentence(control: pd.DataFrame) -> str:
    if control.empty:
        return "**Q2, data equivalence:** no bug-arm run finished."
    parts = []
    for arm, rows in control.groupby("arm", sort=True):
        rows = rows[rows["n"] > 0]
        if rows.empty:
            continue
        same = [r["k"] for r in rows.to_dict("records") if not significant(r)]
        text = f"{arm} − the control is {_by_k(rows)}"
        if len(same) == len(rows):
            text += " (no k differs from SAM on N/k examples at the 5 % level)"
        elif same:
            text += f" (k = {', '.join(map(str, same))} within noise of SAM on N/k examples)"
        parts.append(text)
    if not parts:
        return "**Q2, data equivalence:** no control run pairs with a bug-arm run."
    return (
        "**Q2, data equivalence** (each bug arm at k against sam_full on batches of N/k examples, with the same seeds "
        "and number of updates): " + "; ".join(parts) + "."
    )


def q3_sentence(micro: pd.DataFrame, sharpness: pd.DataFrame) -> str:
    if micro.empty:
        return "**Q3, m-sharpness:** no sam_micro run finished."
    parts = []
    for row in micro.to_dict("records"):
        text = f"sam_micro with m = {row['m']} examples per perturbation (k = {row['k']}) − sam_full is {effect(row)}"
        lam = sharpness[(sharpness["k"] == row["k"]) & (sharpness["measure"] == "lambda_max")]
        if not lam.empty:
            converged = lam.iloc[0]["used"]
            text += f" and {effect(lam.iloc[0], 'in λmax')} (Lanczos converged in {converged} runs)"
        parts.append(text)
    last = micro.iloc[-1]
    if not significant(last):
        reading = "the F1 difference here is not significant, so it neither confirms nor contradicts them"
    elif last["diff"] > 0:
        reading = "here the F1 difference points the same way"
    else:
        reading = "here the F1 difference points the opposite way"
    return (
        f"**Q3, m-sharpness:** {'; '.join(parts)}. The m-sharpness papers report m-SAM better than whole-batch SAM; "
        f"{reading}."
    )


def q4_sentence(invariance: pd.DataFrame) -> str:
    if invariance.empty:
        return "**Q4, invariance:** no sam_full run at k > 1 finished."
    parts = []
    for row in invariance.to_dict("records"):
        if significant(row):
            verdict = "different at the 5 % level"
        elif row["n"] >= 2 and row["ci_high"] - row["ci_low"] <= 10.0:
            verdict = "equal within noise (the interval is at most 10 F1 points wide)"
        else:
            verdict = "no significant difference, but the interval is too wide to show them equal"
        parts.append(f"sam_full at k = {row['k']} − at k = 1 is {effect(row)}: {verdict}")
    return "**Q4, invariance** (the same algorithm at every k): " + "; ".join(parts) + "."


def cos_sentence(table: pd.DataFrame) -> str:
    if table.empty:
        return "**Gradient cosine:** no sam_last run logged the diagnostic."
    rows = table.to_dict("records")
    points = ", ".join(f"{r['cos_mean']:.2f} at k = {r['k']} (floor {r['floor']:.2f})" for r in rows)
    snr = ", ".join(fmt(s, ".2g") for s in table["snr"])
    below = [r["k"] for r in rows if r["snr"] < 0]
    tail = (
        f"; at k = {', '.join(map(str, below))} the mean falls below the floor, which the model cannot produce"
        if below
        else ""
    )
    return (
        f"**Gradient cosine** cos(g_last, g_full) on sam_last's windows: {points}; the i.i.d. model "
        f"√((s+1)/(s+k)) reads s = {snr} off these means (s = N‖μ‖²/σ², the window gradient's signal-to-noise ratio; "
        f"s = 0 is the 1/√k floor){tail}."
    )


def headline(tables: Mapping[str, pd.DataFrame], n: int) -> str:
    """dose_headline.md: one sentence per question, generated from the tables."""
    lines = [
        q1_sentence(tables["gap"], tables["trend"], n),
        q2_sentence(tables["control"]),
        q3_sentence(tables["micro"], tables["sharpness"]),
        q4_sentence(tables["invariance"]),
        cos_sentence(tables["grad_cos"]),
    ]
    return "\n\n".join(lines) + "\n"


def _pair_rows(frame: pd.DataFrame, keys: Sequence[str]) -> list[list]:
    return [
        [
            *[r[k] for k in keys],
            r["n"],
            fmt(r["a_mean"]),
            fmt(r["b_mean"]),
            fmt(r["diff"], signed=True),
            f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
            p_clause(r["p_value"]),
        ]
        for r in frame.to_dict("records")
    ]


PAIR_HEADERS = ["n", "a", "b", "a − b", "95 % CI", "p"]


def pair_table(frame: pd.DataFrame, keys: Sequence[str], a: str, b: str) -> str:
    headers = [*keys, "n", a, b, f"{a} − {b}", "95 % CI", "p"]
    return md_table(headers, _pair_rows(frame, keys), "l" * len(keys) + "rrrrrl")


def target_table(targets: pd.DataFrame) -> str:
    rows = []
    for r in targets.to_dict("records"):
        where = f"{r['arm']} k = {r['k']}" if r["role"] != "control" else f"control, batch {r['batch']}"
        if r["role"] == "reference":
            where = f"sam_full k = 1, batch {r['batch']} (reference)"
        median = "> budget" if math.isinf(r["median_update"]) else fmt(r["median_update"], ".0f")
        span = f"[{fmt(r['low'], '.0f')}, {fmt(r['high'], '.0f')}]".replace("inf", "∞")
        rows.append([where, fmt(r["target"], ".0f"), f"{r['reached']}/{r['n']}", median, span])
    return md_table(["runs", "dev F1 target", "reached", "median update", "[min, max] over seeds"], rows, "llrrl")


def cos_table(table: pd.DataFrame) -> str:
    rows = [
        [
            r["k"],
            r["runs"],
            r["points"],
            f"{r['cos_mean']:.3f}",
            f"[{r['cos_min']:.3f}, {r['cos_max']:.3f}]",
            f"{r['floor']:.3f}",
            fmt(r["snr"], ".3g"),
            fmt(r["ratio_mean"], ".3f"),
            fmt(r["product_mean"], ".3f"),
        ]
        for r in table.to_dict("records")
    ]
    headers = ["k", "runs", "windows", "mean cos", "[min, max]", "1/√k", "implied s", "‖g_last‖/‖g_full‖"]
    headers.append("cos × ratio")
    return md_table(headers, rows, "rrrrlrrrr")


COS_METHOD = """The diagnostic (sam.diagnostics) computes, on the window about to be trained on, with dropout off, the
SAM gradients h_1 … h_k of the k micro-batches at the perturbed weights w + e (e from the whole window's gradient), and
compares g_last = h_k (what last-batch replay steps with) with g_full = (1/k) Σ h_i (what full replay steps with).

Expectation. Let each example's gradient be μ + ξ with E ξ = 0, E‖ξ‖² = σ², independent across examples. A micro-batch
of m = N/k examples has h_i = μ + ε_i with E‖ε_i‖² = σ²/m = kσ²/N, and in high dimension a dot product is close to its
mean, so

    g_last · g_full ≈ ‖μ‖² + (1/k) E‖ε_k‖² = ‖μ‖² + σ²/N
    ‖g_last‖²       ≈ ‖μ‖² + kσ²/N
    ‖g_full‖²       ≈ ‖μ‖² + σ²/N

    cos(g_last, g_full) ≈ √((s + 1)/(s + k)),   ‖g_last‖/‖g_full‖ ≈ √((s + k)/(s + 1)),   s = N‖μ‖²/σ²

s is the signal-to-noise ratio of the window's gradient. With no shared signal (s → 0) the cosine falls to 1/√k, the
floor in the table; with s ≫ k it stays near 1. The model also predicts cos × ratio = 1: the last micro-batch's
gradient is longer by exactly the noise it does not average away. It ignores that e is built from the same window
(so the h_i are not independent of each other) and that s changes along training (the table pools every logged
window); the implied s is a summary of the measured cosine, not a fitted parameter with an interval."""


def setup_lines(cells: pd.DataFrame, runs: pd.DataFrame, n: int, source: str) -> list[str]:
    """The Setup section: what ran, from which commit, on what, for how long."""
    shas = sorted({str(s)[:12] for s in runs.get("env.git.sha", pd.Series(dtype=object)).dropna()})
    dirty = bool(runs.get("env.git.dirty", pd.Series(dtype=bool)).fillna(False).astype(bool).any())
    devices = sorted({str(d) for d in runs.get("device", pd.Series(dtype=object)).dropna()})
    seeds = sorted(cells["seed"].unique())
    ks = sorted(cells.loc[cells["k"] > 1, "k"].unique())
    updates = sorted({int(u) for u in pd.to_numeric(runs.get("updates"), errors="coerce").dropna()})
    wall = pd.to_numeric(runs.get("wall_time_s"), errors="coerce").sum()
    started = pd.to_datetime(runs.get("started_at"), errors="coerce", utc=True)
    finished = pd.to_datetime(runs.get("finished_at"), errors="coerce", utc=True)
    span = (finished.max() - started.min()).total_seconds() if started.notna().any() else math.nan
    lines = [
        f"- Runs: {len(cells)} finished runs with a role in the design ({source}); window N = {n} examples per "
        f"update; k = {', '.join(map(str, ks))}; seeds {', '.join(map(str, seeds))}; "
        f"updates per run: {', '.join(map(str, updates))}.",
        f"- Built from commit {', '.join(shas) or 'unknown'}{' (a dirty tree)' if dirty else ''}; device: "
        f"{', '.join(devices) or 'unknown'}.",
    ]
    if math.isfinite(span):
        lines.append(
            f"- Time: {wall / 60:.1f} min of run wall time in all; {span / 60:.1f} min from the first run's start to "
            f"the last run's end."
        )
    return lines
