"""The house style every figure shares (the report's in analysis.plots, the sharpness section's in
analysis.sharpness.figures): arm colours, labels and line styles from experiments.arms, rc settings, figure
construction without pyplot, PNG writing with repeatable bytes, legends, bands and axis limits."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.arms import BY_NAME

DPI = 120


_EXTRA_COLORS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


STYLE = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 13,
}


def arm_color(arm: str, arms: Sequence[str] = ()) -> str:
    """The arm's fixed colour; an arm outside the four known ones gets a colour by its place among the extra arms."""
    if arm in BY_NAME:
        return BY_NAME[arm].color
    extra = [a for a in arms if a not in BY_NAME]
    index = extra.index(arm) if arm in extra else len(extra)
    return _EXTRA_COLORS[index % len(_EXTRA_COLORS)]


def arm_linestyle(arm: str):
    return BY_NAME[arm].linestyle if arm in BY_NAME else "-"


def arm_label(arm: str) -> str:
    return BY_NAME[arm].label if arm in BY_NAME else arm


def new_figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(width * ncols, 8.0), height * nrows + 0.9), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def styled(fn):
    """Draw inside the house style (rc settings apply to artists made while they are active)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def save(fig: Figure | None, path: str | Path) -> Path | None:
    """Write `fig` as a PNG (dpi 120, no timestamped metadata, so the bytes repeat run to run)."""
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def png_bytes(fig: Figure) -> bytes:
    """The PNG of `fig` as bytes (for IPython.display.Image in a notebook)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def legend_below(fig: Figure, axes: Iterable, title: str | None = None) -> None:
    handles, labels = {}, []
    for ax in np.ravel(list(axes)):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 4),
            title=title,
        )


def band(ax, x, low, high, color) -> None:
    """Shade [low, high] over x in the line's colour (the min-max band over seeds)."""
    ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)


def seed_range(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, min, max) of a cell's values over seeds: the interval every figure draws. Unlike a Student-t interval
    from 3 seeds it never leaves the range the values can take (an F1 below 0, a negative λmax)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    return (float(x.mean()), float(x.min()), float(x.max()))


def clip_axis(ax, low: float | None, high: float | None) -> None:
    """Keep the y axis inside the metric's range [low, high] (None: open), after autoscaling: no F1 axis below 0 %
    or above 100 %, no loss or λmax axis below 0."""
    bottom, top = ax.get_ylim()
    if low is not None and bottom < low:
        bottom = low
    if high is not None and top > high:
        top = high
    ax.set_ylim(bottom, top)


def identical_arm_groups(panel: pd.DataFrame, arms: Sequence[str], x: str, tol: float = 1e-9) -> list[list[str]]:
    """The arms of one panel grouped by identical curves: arms whose values agree at every (seed, x) within `tol`
    (relative and absolute) form one group, drawn as one line (at k = 1, sam_full, sam_last and sam_micro are the
    same algorithm, and three lines on top of each other would hide two of them)."""
    curves = {}
    for arm in arms:
        runs = panel[panel["arm"] == arm]
        if not runs.empty:
            curves[arm] = runs.groupby(["seed", x])["value"].last().sort_index()
    groups: list[list[str]] = []
    for arm, curve in curves.items():
        for group in groups:
            ref = curves[group[0]]
            if curve.index.equals(ref.index) and np.allclose(
                curve.to_numpy(float), ref.to_numpy(float), rtol=tol, atol=tol, equal_nan=True
            ):
                group.append(arm)
                break
        else:
            groups.append([arm])
    return groups


def group_label(group: Sequence[str], k: int) -> str:
    if len(group) == 1:
        return arm_label(group[0])
    return " = ".join(group) + f" (identical at k = {k})"
