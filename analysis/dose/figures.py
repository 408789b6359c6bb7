"""The figures of the dose report, in the house style (analysis.figure_style): the gap against k (Q1), the bug arms'
learning curves over the control's (Q2), final dev F1 against the examples in the update gradient (Q2), m-SAM
against m (Q3) and the gradient cosine against k with its pure-noise floor. Each returns None when its table is
empty; `save_all` writes them as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.dose.tables import expected_cos
from analysis.figure_style import arm_color, arm_label, band, legend_below, new_figure, save, styled

REFERENCE_COLOR = "#222222"
CONTROL_COLOR = "#7f7f7f"


def _log2_axis(ax, values) -> None:
    ticks = sorted({int(v) for v in values})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def _errorbar(ax, x, row, color, label, offset=1.0) -> None:
    """The mean difference at x with its 95 % paired t-interval (no bar when n < 2)."""
    low, high = row["ci_low"], row["ci_high"]
    err = None if math.isnan(low) else [[row["diff"] - low], [high - row["diff"]]]
    ax.errorbar([x * offset], [row["diff"]], yerr=err, color=color, marker="o", capsize=4, linewidth=1.4, label=label)


@styled
def figure_gap(gap: pd.DataFrame, trend: pd.DataFrame, cells: pd.DataFrame) -> Figure | None:
    """Q1: reference − bug arm in final dev F1 against k (log2 axis): mean with its 95 % paired t-interval, each
    seed's difference as a dot, the k = 1 identity (0 by construction) and the fitted line of gap_trend."""
    if gap.empty:
        return None
    fig, axes = new_figure(1, width=7.0, height=4.2)
    ax = axes[0][0]
    ref = cells[cells["role"] == "reference"].groupby("seed")["f1"].mean()
    offsets = {"sam_last": 0.96, "sam_last_only": 1.04}
    for arm, rows in gap.groupby("arm", sort=True):
        color, off = arm_color(arm), offsets.get(arm, 1.0)
        for i, row in enumerate(rows.itertuples()):
            _errorbar(ax, row.k, row._asdict(), color, f"sam_full − {arm_label(arm)}" if i == 0 else None, off)
            bug = cells[(cells["role"] == "bug") & (cells["arm"] == arm) & (cells["k"] == row.k)]
            seeds = ref.reindex(bug["seed"]).to_numpy(dtype=float) - bug["f1"].to_numpy(dtype=float)
            ax.scatter(np.full(len(seeds), row.k * off), seeds, color=color, s=12, alpha=0.5, zorder=3)
        fit = trend[trend["arm"] == arm]
        if not fit.empty and not math.isnan(fit["slope"].iloc[0]):
            xs = np.array([1.0, float(rows["k"].max())])
            ax.plot(xs, fit["intercept"].iloc[0] + fit["slope"].iloc[0] * np.log2(xs), color=color, linestyle=":")
    ax.scatter([1], [0], facecolors="none", edgecolors=REFERENCE_COLOR, s=40, label="k = 1: every rule is sam_full")
    ax.axhline(0.0, color="#888888", linewidth=0.8, linestyle="--")
    _log2_axis(ax, [1, *gap["k"]])
    ax.set_xlabel("micro-batches per update k (window fixed, micro-batch N/k)")
    ax.set_ylabel("sam_full − bug arm, final dev F1 (points)")
    fig.suptitle("How the bug's cost grows with k: mean ± 95 % paired t-interval, dots = seeds, dotted = fit on log2 k")
    legend_below(fig, axes)
    return fig


def _mean_curve(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby("update")["value"].agg(["mean", "min", "max"]).reset_index()


@styled
def figure_control_curves(curves: pd.DataFrame) -> Figure | None:
    """Q2: one panel per k: dev F1 against the update of sam_last and sam_last_only at k, the control (sam_full on
    batches of N/k) and the reference (sam_full on batches of N); mean over seeds, band = min–max."""
    bug = curves[curves["role"] == "bug"]
    if bug.empty:
        return None
    ks = sorted(bug["k"].unique())
    fig, axes = new_figure(len(ks), width=4.0, height=3.4)
    for ax, k in zip(axes[0], ks):
        batch = int(bug.loc[bug["k"] == k, "examples_per_gradient"].iloc[0])
        lines = [
            (curves[curves["role"] == "reference"], REFERENCE_COLOR, "sam_full, batch N (reference)", "-"),
            (curves[(curves["role"] == "control") & (curves["batch"] == batch)], CONTROL_COLOR, "control", "--"),
        ]
        for arm in sorted(bug["arm"].unique()):
            lines.append((bug[(bug["arm"] == arm) & (bug["k"] == k)], arm_color(arm), arm_label(arm), "-"))
        for frame, color, label, style in lines:
            if frame.empty:
                continue
            agg = _mean_curve(frame)
            text = "control: sam_full, batch N/k" if label == "control" else label
            on_top = 4 if label == "control" else 2  # dashed over the bug arm it may coincide with
            ax.plot(agg["update"], agg["mean"], color=color, linestyle=style, linewidth=1.5, label=text, zorder=on_top)
            if frame["run_id"].nunique() > 1:
                band(ax, agg["update"], agg["min"], agg["max"], color)
        ax.set_title(f"k = {k}: {batch} examples per update gradient")
        ax.set_xlabel("optimizer update")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("dev F1")
    fig.suptitle("Is the bug SAM on N/k examples? The bug arms at k against SAM on batches of N/k (mean, min–max)")
    legend_below(fig, axes)
    return fig


@styled
def figure_examples(cells: pd.DataFrame) -> Figure | None:
    """Q2: final dev F1 against the examples the update gradient averages (log2 axis): the bug arms at N/k, the
    control at its batch, sam_full and sam_micro at N; dots = seeds, lines join the means of a series."""
    if cells.empty:
        return None
    fig, axes = new_figure(1, width=7.0, height=4.2)
    ax = axes[0][0]
    series = [
        ("control: sam_full on its batch", cells[cells["role"].isin(["control", "reference"])], CONTROL_COLOR, "s"),
        *[
            (arm_label(arm), cells[(cells["role"] == "bug") & (cells["arm"] == arm)], arm_color(arm), "o")
            for arm in sorted(cells.loc[cells["role"] == "bug", "arm"].unique())
        ],
    ]
    for label, frame, color, marker in series:
        if frame.empty:
            continue
        means = frame.groupby("examples_per_gradient")["f1"].mean()
        ax.plot(means.index, means.to_numpy(), color=color, marker=marker, linewidth=1.4, label=label)
        ax.scatter(frame["examples_per_gradient"], frame["f1"], color=color, s=12, alpha=0.45, zorder=3)
    _log2_axis(ax, cells["examples_per_gradient"])
    ax.set_xlabel("examples in the update gradient (N/k for the bug arms, the batch for the control)")
    ax.set_ylabel("final dev F1")
    ax.set_ylim(0, 100)
    fig.suptitle("Final dev F1 against the examples each update's gradient averages (dots = seeds)")
    legend_below(fig, axes)
    return fig


@styled
def figure_micro(cells: pd.DataFrame, sharpness: pd.DataFrame | None) -> Figure | None:
    """Q3: final dev F1 and λmax (converged Lanczos only) against m, the examples per SAM perturbation: sam_micro at
    m = N/k next to sam_full (m = N); dots = seeds."""
    runs = cells[cells["role"].isin(["micro", "reference"])].copy()
    if runs[runs["role"] == "micro"].empty:
        return None
    runs["m"] = np.where(runs["role"] == "micro", runs["batch"], runs["examples_per_gradient"])
    panels = [("f1", "final dev F1")]
    if sharpness is not None and "lambda_max" in sharpness.columns:
        ok = sharpness[sharpness["lambda_max_converged"].astype(bool)][["run_id", "lambda_max"]]
        runs = runs.merge(ok, on="run_id", how="left")
        panels.append(("lambda_max", "λmax at the final weights (converged)"))
    fig, axes = new_figure(len(panels), width=4.4, height=3.6)
    for ax, (column, label) in zip(axes[0], panels):
        for arm, frame in runs.groupby("arm"):
            values = frame.dropna(subset=[column])
            if values.empty:
                continue
            color = arm_color(arm)
            ax.scatter(values["m"], values[column], color=color, s=18, alpha=0.6, label=arm_label(arm))
            means = values.groupby("m")[column].mean()
            ax.scatter(means.index, means.to_numpy(), color=color, marker="_", s=300, linewidths=2)
        _log2_axis(ax, runs["m"])
        ax.set_xlabel("examples per SAM perturbation m")
        ax.set_ylabel(label)
    fig.suptitle("m-sharpness on QA: sam_micro (a perturbation per micro-batch of m) against sam_full (m = N)")
    legend_below(fig, axes)
    return fig


@styled
def figure_grad_cos(table: pd.DataFrame) -> Figure | None:
    """cos(g_last, g_full) against k: the mean over windows and seeds with its [min, max], the pure-noise floor
    1/√k and the model √((s+1)/(s+k)) at the median implied s."""
    if table.empty:
        return None
    fig, axes = new_figure(1, width=6.5, height=4.0)
    ax = axes[0][0]
    ks = table["k"].to_numpy(dtype=float)
    color = arm_color("sam_last")
    err = [table["cos_mean"] - table["cos_min"], table["cos_max"] - table["cos_mean"]]
    ax.errorbar(ks, table["cos_mean"], yerr=err, color=color, marker="o", capsize=4, label="measured (sam_last)")
    grid = np.geomspace(1, max(ks), 50)
    ax.plot(grid, 1 / np.sqrt(grid), color="#888888", linestyle="--", label="1/√k (pure noise)")
    snr = float(np.nanmedian(table["snr"])) if table["snr"].notna().any() else math.nan
    if math.isfinite(snr) and snr >= 0:
        model = [expected_cos(k, snr) for k in grid]
        ax.plot(grid, model, color=REFERENCE_COLOR, linestyle=":", label=f"√((s+1)/(s+k)), s = {snr:.2g}")
    _log2_axis(ax, [1, *ks])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("micro-batches per update k")
    ax.set_ylabel("cos(last micro-batch, whole window)")
    fig.suptitle("SAM gradient of the last micro-batch against the window's: mean and [min, max] over windows, seeds")
    legend_below(fig, axes)
    return fig


def save_all(out_dir: Path, tables: dict, cells: pd.DataFrame, curves: pd.DataFrame, sharpness) -> dict[str, Path]:
    """Write every figure that has data to out_dir/figures/dose_<name>.png; {name: path} of those written."""
    figures = {
        "gap": figure_gap(tables["gap"], tables["trend"], cells),
        "control_curves": figure_control_curves(curves),
        "examples": figure_examples(cells),
        "micro": figure_micro(cells, sharpness),
        "grad_cos": figure_grad_cos(tables["grad_cos"]),
    }
    written = {}
    for name, fig in figures.items():
        path = save(fig, out_dir / "figures" / f"dose_{name}.png")
        if path is not None:
            written[name] = path
    return written
