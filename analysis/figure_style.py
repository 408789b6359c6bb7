"""The house style every figure shares (the report's in analysis.plots, the sharpness section's in
analysis.sharpness.figures): arm colours, labels and line styles from experiments.arms, rc settings, figure
construction without pyplot, PNG writing with repeatable bytes, legends, bands and axis limits, the merging of arms
whose runs are identical (k = 1) into one labelled line, and the re-flow of titles and legends into the canvas
(`fit_to_canvas`, run by `styled` on every figure it returns)."""

from __future__ import annotations

import functools
import io
import math
import textwrap
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


def arm_hatch(arm: str) -> str | None:
    """The bar hatch that stands for the arm's line style: none for a solid line, // for dashed, .. for dotted (a
    dash pattern whose dashes are no longer than its gaps)."""
    style = arm_linestyle(arm)
    if style in ("-", "solid"):
        return None
    if isinstance(style, tuple) and len(style) == 2 and style[1] and style[1][0] <= min(style[1][1:] or (1,)):
        return ".."
    return "//"


def arm_label(arm: str) -> str:
    return BY_NAME[arm].label if arm in BY_NAME else arm


def new_figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(width * ncols, 8.0), height * nrows + 0.9), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def styled(fn):
    """Draw inside the house style (rc settings apply to artists made while they are active), then fit the figure's
    titles and legends into its canvas (`fit_to_canvas`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            fig = fn(*args, **kwargs)
            if isinstance(fig, Figure):
                fit_to_canvas(fig)
            return fig

    return wrapper


def _rewrapped(text: str, measured: float, room: float) -> str:
    """`text` re-wrapped at word boundaries so that its widest line, `measured` pixels now, fits `room` pixels
    (characters scale about linearly with width; 5 % spare for the uneven widths of glyphs)."""
    longest = max(len(line) for line in text.split("\n"))
    chars = max(12, int(longest * room / measured * 0.95))
    return "\n".join(textwrap.fill(line, chars, break_long_words=False) for line in text.split("\n"))


def fit_to_canvas(fig: Figure, margin: float = 4.0, rounds: int = 8) -> Figure:
    """Re-flow what the constrained layout does not shrink until it lies inside the canvas: a figure text (the
    suptitle) wider than the figure and an axes title wider than its axes are wrapped at word boundaries, a figure
    legend wider than the figure (one of `legend_below`'s: it is made again) loses columns (down to one, then its
    labels are wrapped). Each round lays the figure out (a draw without rendering, as savefig does) and measures;
    `margin` in pixels at each edge."""
    for _ in range(rounds):
        fig.draw_without_rendering()
        renderer = fig.canvas.get_renderer()
        room = fig.bbox.width - 2 * margin
        changed = False
        for text in fig.texts:
            width = text.get_window_extent(renderer).width
            if text.get_text() and width > room:
                text.set_text(_rewrapped(text.get_text(), width, room))
                changed = True
        for ax in fig.axes:
            width = ax.title.get_window_extent(renderer).width
            if ax.get_title() and width > ax.bbox.width + margin:
                ax.set_title(_rewrapped(ax.get_title(), width, ax.bbox.width))
                changed = True
        for legend in list(fig.legends):
            width = legend.get_window_extent(renderer).width
            if width <= room or not hasattr(legend, "source_handles"):
                continue
            # the legend's box is built when it is made (set_ncols alone does not re-flow it): a new one replaces it
            ncols = legend._ncols  # no public getter
            labels = [t.get_text() for t in legend.get_texts()]
            if ncols == 1:  # one column and still too wide: wrap its labels
                widths = [t.get_window_extent(renderer).width for t in legend.get_texts()]
                labels = [_rewrapped(label, w, w * room / width) for label, w in zip(labels, widths)]
            title = legend.get_title().get_text() or None
            handles = legend.source_handles
            legend.remove()
            # columns of a legend are about equally wide: as many as the room holds, at least one fewer than now
            _legend_below(fig, handles, labels, max(1, min(ncols - 1, int(ncols * room / width))), title)
            changed = True
        if not changed:
            break
    return fig


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


def legend_below(fig: Figure, axes: Iterable, title: str | None = None, extra: Sequence = ()) -> None:
    """One legend under the panels: every labelled artist of `axes` once per label, in the order drawn, then the
    (handle, label) pairs of `extra` (a marker's meaning). Up to 4 columns; `fit_to_canvas` takes columns away when
    it is wider than the figure."""
    handles, labels = {}, []
    pairs = [pair for ax in np.ravel(list(axes)) for pair in zip(*ax.get_legend_handles_labels())]
    for handle, label in [*pairs, *extra]:
        if label not in handles:
            handles[label] = handle
            labels.append(label)
    if handles:
        _legend_below(fig, [handles[label] for label in labels], labels, min(len(labels), 4), title)


def _legend_below(fig: Figure, handles: Sequence, labels: Sequence[str], ncols: int, title: str | None):
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, title=title)
    legend.source_handles = list(handles)  # the drawn artists, for fit_to_canvas to make it again (legend_handles
    return legend  # holds the legend's own proxies, which lose an errorbar's caps)


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
    (relative and absolute) form one group, drawn as one line labelled by `group_label` (at k = 1 sam_full, sam_last,
    sam_last_only and sam_micro are the same algorithm, and four lines on top of each other would hide three)."""
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
    """The legend label of one line of `identical_arm_groups`: the arm's label, and for a merged line the names of
    the arms it also stands for ("SAM, full replay = sam_last = sam_last_only (identical runs at k = 1)")."""
    if len(group) == 1:
        return arm_label(group[0])
    return " = ".join([arm_label(group[0]), *group[1:]]) + f" (identical runs at k = {k})"
