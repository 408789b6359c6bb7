"""Figures of a sweep, drawn from the frames of `analysis.collect`.

Every `plot_*` function saves one PNG into `out_dir` and returns its Path, or returns None (and logs why) when the
frame holds nothing to draw. The matching `figure_*` function returns the matplotlib Figure itself (for a notebook).
Figures are built with `matplotlib.figure.Figure` and the Agg renderer directly, never through pyplot, so drawing
here neither needs nor changes a global backend, and a notebook's inline display keeps working.

Colours are fixed per arm in every figure (analysis.figure_style, from experiments.arms): AdamW dark grey, SAM
(full replay) blue, SAM (last-batch replay, the bug) red dashed, m-SAM green, SAM on the last micro-batch alone (the
Trainer pattern) orange dotted. Arms whose runs are identical (at k = 1 every SAM arm is one algorithm) are one line,
labelled with every arm it stands for. Bands around a mean line span the minimum to the maximum over seeds (said in
each figure). Every figure is fitted into its canvas (figure_style.fit_to_canvas, through `styled`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.collect import arm_order
from analysis.figure_style import (
    arm_color,
    arm_hatch,
    arm_label,
    arm_linestyle,
    band,
    clip_axis,
    group_label,
    identical_arm_groups,
    legend_below,
    new_figure,
    save,
    seed_range,
    styled,
)
from analysis.targets import censored_median
from experiments.metrics import short as metric_short
from experiments.rundir import COMPLETED

log = logging.getLogger(__name__)

# File names, in the order the report shows them.
FIGURES = {
    "dev_curves": "dev_curves.png",
    "time_to_target": "time_to_target.png",
    "train_loss": "train_loss.png",
    "final_scores": "final_scores.png",
    "step_time": "step_time.png",
    "grad_cos": "grad_cos.png",
}


def _ks(frame: pd.DataFrame) -> list[int]:
    return sorted(int(k) for k in pd.unique(frame["k"].dropna()))


def _mean_band(per_seed: pd.DataFrame, x: str) -> pd.DataFrame:
    """Mean, min and max of `value` over runs at each x."""
    grouped = per_seed.groupby(x)["value"]
    return pd.DataFrame(
        {"mean": grouped.mean(), "low": grouped.min(), "high": grouped.max(), "n": grouped.count()}
    ).reset_index()


def _smooth_window(n_updates: int) -> int:
    """Rolling-mean window for a noisy per-update curve: about 1/40 of its length, at least 1."""
    return max(1, int(round(n_updates / 40)))


# ---------------------------------------------------------------------------------------------------------------------
# learning curves


@styled
def figure_train_loss(curves: pd.DataFrame, metric: str = "train/loss") -> Figure | None:
    """Training loss against the optimizer update: one panel per accumulation k, per arm the mean over seeds (each
    seed smoothed with a rolling mean first) and a min–max band over seeds."""
    data = curves[(curves["metric"] == metric)].dropna(subset=["update", "value", "k"])
    data = data[np.isfinite(data["value"])]
    if data.empty:
        log.info("figure_train_loss: no %s events; figure skipped", metric)
        return None
    ks = _ks(data)
    arms = arm_order(data["arm"])
    fig, axes = new_figure(len(ks))
    windows = []
    for ax, k in zip(axes[0], ks):
        panel = data[data["k"] == k]
        for group in identical_arm_groups(panel, arms, "update"):
            arm = group[0]
            runs = panel[panel["arm"] == arm]
            parts = []
            for _, run in runs.groupby("run_id"):
                run = run.sort_values("update").drop_duplicates("update", keep="last")
                window = _smooth_window(len(run))
                windows.append(window)
                parts.append(run.assign(value=run["value"].rolling(window, min_periods=1).mean()))
            agg = _mean_band(pd.concat(parts), "update")
            color = arm_color(arm, arms)
            n_seeds = runs["run_id"].nunique()
            ax.plot(
                agg["update"],
                agg["mean"],
                color=color,
                linewidth=1.8,
                linestyle=arm_linestyle(arm) if len(group) == 1 else "-",
                label=group_label(group, k),
            )
            if n_seeds > 1:
                band(ax, agg["update"], agg["low"], agg["high"], color)
        ax.set_title(f"accumulation k = {k}")
        ax.set_xlabel("optimizer update")
    axes[0][0].set_ylabel("training loss (first pass)")
    smooth = f"rolling mean over {max(windows)} updates; " if windows and max(windows) > 1 else ""
    fig.suptitle(f"Training loss — mean over seeds, band = min–max over seeds\n({smooth}one panel per k)")
    legend_below(fig, axes)
    return fig


def _eval_events(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every evaluation of `metric` (periodic ones on the dev subset, epoch-end and final ones on the whole dev set),
    one value per run and update (an epoch-end evaluation that is also the final one appears once)."""
    data = curves[(curves["metric"] == metric) & curves["eval_kind"].isin(["periodic", "epoch", "final"])]
    data = data.dropna(subset=["update", "value", "k"])
    return data.sort_values(["run_id", "update", "time"]).drop_duplicates(["run_id", "update"], keep="last")


DEV_ROWS = (
    ("dev/f1", "dev F1 (%)", (0.0, 100.5)),
    ("dev/rouge_w", "dev ROUGE-W (%)", (0.0, 100.5)),
    ("dev/loss", "dev loss", (0.0, None)),
)


@styled
def figure_dev_curves(curves: pd.DataFrame, baseline: float | None = None) -> Figure | None:
    """The learning curves: one row per dev metric the runs logged (DEV_ROWS: F1, ROUGE-W for KLUE-MRC, loss) at
    every evaluation against the optimizer update, one column per accumulation k; per arm the mean over seeds with a
    min–max band. Arms with identical curves (k = 1) are one line. `baseline`: the no-training floor of the primary
    score (analysis.baseline.no_training_f1), drawn as a horizontal line on the score row."""
    rows = [(m, label, limits) for m, label, limits in DEV_ROWS if not _eval_events(curves, m).empty]
    if not rows:
        log.info("figure_dev_curves: no evaluation events of %s; figure skipped", ", ".join(m for m, _, _ in DEV_ROWS))
        return None
    ks = _ks(pd.concat([_eval_events(curves, m) for m, _, _ in rows]))
    arms = arm_order(curves["arm"])
    fig, axes = new_figure(len(ks), nrows=len(rows), height=3.0)
    for r, (metric, label, (low, high)) in enumerate(rows):
        data = _eval_events(curves, metric)
        data = data[np.isfinite(data["value"])]
        for c, k in enumerate(ks):
            ax = axes[r][c]
            panel = data[data["k"] == k]
            for group in identical_arm_groups(panel, arms, "update"):
                runs = panel[panel["arm"] == group[0]]
                agg = _mean_band(runs, "update")
                color = arm_color(group[0], arms)
                ax.plot(
                    agg["update"],
                    agg["mean"],
                    color=color,
                    marker="o",
                    markersize=3,
                    linewidth=1.6,
                    linestyle=arm_linestyle(group[0]) if len(group) == 1 else "-",
                    label=group_label(group, k),
                )
                if runs["run_id"].nunique() > 1:
                    band(ax, agg["update"], agg["low"], agg["high"], color)
            if baseline is not None and r == 0 and metric != "dev/loss":
                ax.axhline(
                    baseline,
                    color="0.45",
                    linestyle=":",
                    linewidth=1.2,
                    label=f"no-training heuristic ({baseline:.1f})",
                )
            clip_axis(ax, low, high)
            if r == 0:
                ax.set_title(f"accumulation k = {k}")
            if r == len(rows) - 1:
                ax.set_xlabel("optimizer update")
            if c == 0:
                ax.set_ylabel(label)
    fig.suptitle("Learning curves — dev metrics at every evaluation, mean over seeds, band = min–max over seeds")
    legend_below(fig, axes)
    return fig


# cos(g_last, g_full) at k = 1 is 1 up to rounding: the window is one micro-batch, so the two gradients are one
GRAD_COS_TRIVIAL_TOL = 1e-6


@styled
def figure_grad_cos(curves: pd.DataFrame, metric: str = "diag/grad_cos") -> Figure | None:
    """Gradient fidelity: cosine between the last-micro-batch SAM gradient (what last-batch replay steps with) and
    the full-replay SAM gradient on the same window, against the update; one panel per k, one line per SAM arm
    whose runs logged it (the diagnostic is measured at the weights of that arm's runs). k = 1 is left out, and the
    title says so, when every value there is 1 within GRAD_COS_TRIVIAL_TOL: with one micro-batch the two gradients
    are the same, so the panel would be a flat line of the trivial value (drawn when it is the only k, or when a
    value differs: then something is wrong)."""
    data = curves[curves["metric"] == metric].dropna(subset=["update", "value", "k"])
    data = data[np.isfinite(data["value"])]
    if data.empty:
        log.info("figure_grad_cos: no %s events (diagnostics.grad_fidelity was off); figure skipped", metric)
        return None
    trivial = [
        k for k in _ks(data) if k == 1 and np.allclose(data[data["k"] == k]["value"], 1.0, atol=GRAD_COS_TRIVIAL_TOL)
    ]
    ks = [k for k in _ks(data) if k not in trivial] or _ks(data)
    left_out = [k for k in trivial if k not in ks]
    arms = arm_order(data["arm"])
    fig, axes = new_figure(len(ks))
    for ax, k in zip(axes[0], ks):
        panel = data[data["k"] == k]
        for group in identical_arm_groups(panel, arms, "update"):
            arm = group[0]
            runs = panel[panel["arm"] == arm]
            agg = _mean_band(runs, "update")
            color = arm_color(arm, arms)
            ax.plot(
                agg["update"],
                agg["mean"],
                color=color,
                linewidth=1.6,
                marker=".",
                linestyle=arm_linestyle(arm) if len(group) == 1 else "-",
                label=group_label(group, k),
            )
            if runs["run_id"].nunique() > 1:
                band(ax, agg["update"], agg["low"], agg["high"], color)
        ax.axhline(1.0, color="#888888", linewidth=0.8, linestyle="--")
        ax.set_title(f"accumulation k = {k}")
        ax.set_xlabel("optimizer update")
        ax.set_ylim(min(-0.05, float(panel["value"].min()) - 0.05), 1.05)
        if panel["update"].nunique() == 1:  # one evaluation: an axis around it, not ±4 % of one value
            ax.set_xlim(0, 2 * float(panel["update"].iloc[0]))
    axes[0][0].set_ylabel("cos(g_last micro-batch, g_full window)")
    title = (
        "Gradient fidelity of last-batch replay: cos(SAM gradient of the last micro-batch, full-replay SAM gradient)"
        " on the same window (1 = same direction)\nmean over seeds, band = min–max over seeds"
    )
    if left_out:
        title += (
            f"; k = {', '.join(map(str, left_out))} not drawn: one micro-batch per update, so the two gradients are "
            f"the same (every value 1 within {GRAD_COS_TRIVIAL_TOL:g})"
        )
    fig.suptitle(title)
    legend_below(fig, axes, title="measured at the weights of the runs of")
    return fig


@styled
def figure_time_to_target(table: pd.DataFrame, metric: str | None = None) -> Figure | None:
    """Updates each run needed to first reach each target of `metric` (analysis.targets.time_to_target): one panel
    per accumulation k, targets on x, per arm the seeds as dots and the median as a bar; a run that never reached the
    target is an open triangle at its last evaluation (right-censored: it needs more than that). A k at which no run
    reached any target (the short k = 1 sanity row) is left out, and the title says so. `metric`: dev/f1, else
    dev/rouge_w (KLUE-MRC), whichever the table has."""
    present = set(table["target_metric"]) if not table.empty else set()
    metric = metric or next((m for m in ("dev/f1", "dev/rouge_w") if m in present), "dev/f1")
    short = metric_short(metric)  # F1, ROUGE-W
    data = table[table["target_metric"] == metric] if not table.empty else table
    if data.empty:
        log.info("figure_time_to_target: no %s targets; figure skipped", metric)
        return None
    # accumulation values where some run reached some target (a short sanity row that reaches none is left out)
    ks = [k for k in _ks(data) if data[data["k"] == k]["reached"].astype(bool).any()] or _ks(data)
    left_out = [k for k in _ks(data) if k not in ks]
    arms = arm_order(data["arm"])
    targets = sorted(data["target"].astype(float).unique())
    offsets = dict(zip(arms, _dodge(len(arms), width=0.6)))
    half = min(0.09, 0.4 * 0.6 / max(1, len(arms) - 1))  # median bars of neighbouring arms must not touch
    fig, axes = new_figure(len(ks))
    for ax, k in zip(axes[0], ks):
        panel = data[data["k"] == k]
        for arm in arms:
            color = arm_color(arm, arms)
            for i, target in enumerate(targets):
                cell = panel[(panel["arm"] == arm) & (panel["target"].astype(float) == target)]
                if cell.empty:
                    continue
                x = i + offsets[arm]
                reached = cell["reached"].astype(bool).to_numpy()
                updates = cell["update"].astype(float).to_numpy()
                ax.scatter(
                    np.full(reached.sum(), x), updates[reached], s=22, color=color, zorder=3, label=arm_label(arm)
                )
                ax.scatter(
                    np.full((~reached).sum(), x),
                    updates[~reached],
                    s=34,
                    marker="^",
                    facecolors="none",
                    edgecolors=color,
                    zorder=3,
                    label="_nolegend_",  # one grey entry for every arm's triangles (legend_below's extra)
                )
                median = censored_median(np.where(reached, updates, np.inf))
                if np.isfinite(median):
                    ax.hlines(median, x - half, x + half, color=color, linewidth=2.4, zorder=4)
        ax.set_xticks(range(len(targets)), [f"{short} {t:g}" for t in targets])
        ax.grid(axis="x", visible=False)
        ax.set_ylim(bottom=0)
        ax.set_title(f"accumulation k = {k}")
        ax.set_xlabel("target")
    axes[0][0].set_ylabel("optimizer updates to reach it")
    title = f"Updates to reach a dev {short} target — dots: seeds, bar: median; ▵: not reached within the budget"
    if left_out:
        title += f"\n(k = {', '.join(map(str, left_out))} left out: no run there reached a target)"
    fig.suptitle(title)
    not_reached = Line2D(
        [], [], linestyle="none", marker="^", markersize=6, markerfacecolor="none", markeredgecolor="#555555"
    )
    legend_below(fig, axes, extra=[(not_reached, "not reached (drawn at the last evaluation)")])
    return fig


# ---------------------------------------------------------------------------------------------------------------------
# per-run numbers


def _completed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == COMPLETED] if "status" in runs.columns else runs


def _dodge(n: int, width: float = 0.7) -> np.ndarray:
    if n == 1:
        return np.zeros(1)
    return np.linspace(-width / 2, width / 2, n)


@styled
def figure_final_scores(
    runs: pd.DataFrame,
    metrics: Sequence[tuple[str, str]] = (("final.dev/em", "dev exact match (%)"), ("final.dev/f1", "dev F1 (%)")),
) -> Figure | None:
    """Final dev EM and F1 of completed runs: per k (x) and arm, every seed as a dot and the mean with a min–max bar
    over seeds (a score axis from 0 to 100: no interval can leave the metric's range)."""
    runs = _completed(runs)
    metrics = [(m, label) for m, label in metrics if m in runs.columns and runs[m].notna().any()]
    if runs.empty or not metrics:
        log.info("figure_final_scores: no completed run with final dev metrics; figure skipped")
        return None
    runs = runs.dropna(subset=["k"])
    ks = sorted(int(k) for k in runs["k"].unique())
    arms = arm_order(runs["arm"])
    offsets = dict(zip(arms, _dodge(len(arms), width=0.6)))
    fig, axes = new_figure(len(metrics), width=5.2)
    for ax, (metric, label) in zip(axes[0], metrics):
        for arm in arms:
            color = arm_color(arm, arms)
            xs, means, lows, highs = [], [], [], []
            for i, k in enumerate(ks):
                values = runs[(runs["arm"] == arm) & (runs["k"] == k)][metric].dropna().to_numpy(dtype=float)
                if values.size == 0:
                    continue
                mean, low, high = seed_range(values)
                x = i + offsets[arm]
                xs.append(x)
                means.append(mean)
                lows.append(mean - low)
                highs.append(high - mean)
                # single seeds just right of the error bar, so the bar does not hide them
                ax.scatter(np.full(values.size, x + 0.06), values, s=14, color=color, alpha=0.5, linewidths=0, zorder=2)
            if xs:
                ax.errorbar(
                    xs,
                    means,
                    yerr=[lows, highs],
                    fmt="o",
                    color=color,
                    markersize=6,
                    capsize=4,
                    elinewidth=1.6,
                    label=arm_label(arm),
                    zorder=3,
                )
        ax.set_xticks(range(len(ks)), [f"k = {k}" for k in ks])
        ax.grid(axis="x", visible=False)
        ax.set_xlabel("gradient accumulation steps")
        ax.set_ylabel(label)
        ax.set_ylim(0, 101)
        ax.set_title(label.split(" (")[0])
    fig.suptitle("Final dev scores — mean and min–max over seeds (dots: single seeds)")
    legend_below(fig, axes)
    return fig


@styled
def figure_step_time(runs: pd.DataFrame, metric: str = "mean_step_time_s") -> Figure | None:
    """Mean wall time of one optimizer update, grouped by k (x) with one bar per arm: the mean over seeds (labelled
    on the bar) and error bars from the fastest to the slowest seed."""
    runs = _completed(runs)
    if "literal_cost" in runs.columns:  # a shortcut run's time is not what its arm costs
        runs = runs[runs["literal_cost"].fillna(True).astype(bool)]
    if metric not in runs.columns or runs[metric].dropna().empty:
        log.info("figure_step_time: no completed run with %s; figure skipped", metric)
        return None
    runs = runs.dropna(subset=["k", metric])
    arms = arm_order(runs["arm"])
    ks = sorted(int(k) for k in runs["k"].unique())
    width = 0.8 / len(arms)
    offsets = dict(zip(arms, _dodge(len(arms), width=0.8 - width)))
    fig, axes = new_figure(1, width=max(6.4, 1.1 * len(ks) * len(arms)), height=3.8)
    ax = axes[0][0]
    for arm in arms:
        stats = runs[runs["arm"] == arm].groupby("k")[metric].agg(["mean", "min", "max"])
        xs = [i + offsets[arm] for i, k in enumerate(ks) if k in stats.index]
        if not xs:
            continue
        sub = stats.loc[[k for k in ks if k in stats.index]]
        color = arm_color(arm, arms)
        ax.bar(
            xs,
            sub["mean"],
            width=width * 0.92,
            color=color,
            alpha=0.85,
            label=arm_label(arm),
            hatch=arm_hatch(arm),
            edgecolor="white",
            linewidth=0.5,
        )
        ax.errorbar(
            xs,
            sub["mean"],
            yerr=[sub["mean"] - sub["min"], sub["max"] - sub["mean"]],
            fmt="none",
            ecolor="#222222",
            elinewidth=1.0,
            capsize=3,
        )
        for x, mean, top in zip(xs, sub["mean"], sub["max"]):  # the value just above its error bar
            ax.annotate(
                f"{mean:.3g} s",
                (x, top),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(range(len(ks)), [f"k = {k}" for k in ks])
    ax.set_xlabel("gradient accumulation steps k (micro-batches per update)")
    ax.set_ylabel("seconds per optimizer update")
    ax.grid(axis="x", visible=False)
    ax.margins(y=0.12)
    fig.suptitle("Time per update — mean over seeds, error bars = min–max over seeds")
    legend_below(fig, axes)
    return fig


# ---------------------------------------------------------------------------------------------------------------------
# save to files


def _saved(fig: Figure | None, out_dir: str | Path, name: str) -> Path | None:
    path = save(fig, Path(out_dir) / FIGURES[name])
    if path is not None:
        log.info("wrote %s", path)
    return path


def plot_train_loss(curves: pd.DataFrame, out_dir: str | Path) -> Path | None:
    return _saved(figure_train_loss(curves), out_dir, "train_loss")


def plot_dev_curves(curves: pd.DataFrame, out_dir: str | Path, baseline: float | None = None) -> Path | None:
    return _saved(figure_dev_curves(curves, baseline), out_dir, "dev_curves")


def plot_time_to_target(table: pd.DataFrame, out_dir: str | Path) -> Path | None:
    return _saved(figure_time_to_target(table), out_dir, "time_to_target")


def plot_final_scores(runs: pd.DataFrame, out_dir: str | Path) -> Path | None:
    return _saved(figure_final_scores(runs), out_dir, "final_scores")


def plot_step_time(runs: pd.DataFrame, out_dir: str | Path) -> Path | None:
    return _saved(figure_step_time(runs), out_dir, "step_time")


def plot_grad_cos(curves: pd.DataFrame, out_dir: str | Path) -> Path | None:
    return _saved(figure_grad_cos(curves), out_dir, "grad_cos")


def plot_all(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: str | Path,
    targets: pd.DataFrame | None = None,
    baseline: float | None = None,
) -> dict[str, Path | None]:
    """Every figure; {name: path or None (skipped)} in report order. `targets`: the table of
    analysis.targets.time_to_target (no updates-to-target figure without it); `baseline`: the no-training floor of
    the primary score, a line on the learning curves."""
    return {
        "dev_curves": plot_dev_curves(curves, out_dir, baseline),
        "time_to_target": plot_time_to_target(targets if targets is not None else pd.DataFrame(), out_dir),
        "train_loss": plot_train_loss(curves, out_dir),
        "final_scores": plot_final_scores(runs, out_dir),
        "step_time": plot_step_time(runs, out_dir),
        "grad_cos": plot_grad_cos(curves, out_dir),
    }
