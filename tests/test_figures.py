"""Every figure of the report (analysis.plots) and of the sharpness section (analysis.sharpness.figures), drawn from
a hand-made sweep shaped like the default ablation: five arms at k = 1, where sam_last and sam_last_only are the same
runs as sam_full (tests/analysis_fixtures.py), and at k = 4 without m-SAM; the sharpness numbers are made up per run
(analysis_fixtures.sharpness_inputs). Checked on the rendered figure (Agg, the constrained layout run by a draw):

- the whole drawing, the figure title and every legend lie inside the canvas;
- no two arms' lines (or dots) are drawn with the same data in one panel, where the one on top would hide the other;
- every arm with data in a panel is named in that panel's legend entries (an arm drawn as the line of another, at
  k = 1, is named in that line's label);
- no panel is a single x value (a one-point line on a degenerate axis);
- the panels of one figure share k, unless each is the column of its own k ("accumulation k = N").

Each figure is drawn twice: from the whole sweep and from its k = 4 runs alone (one panel per figure: the narrowest
canvas, where a long title or legend is cut first).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from analysis import plots
from analysis.collect import collect_curves, collect_runs
from analysis.figure_style import arm_color, arm_label
from analysis.sharpness import figures as sharpness_figures
from analysis.targets import time_to_target
from experiments.arms import INTERPOLATION_PAIRS
from tests.analysis_fixtures import make_sweep, sharpness_inputs

ARMS = ("adamw", "sam_full", "sam_last", "sam_last_only", "sam_micro")
KS = (1, 4)
SEEDS = (0, 1, 2)
EXCLUDE = (("sam_micro", 4),)  # m-SAM only in the k = 1 row, as in configs/sweep/ablation.yaml
TARGETS = {"dev/f1": [50.0, 55.0, 62.0]}
COLOR_ARM = {to_hex(arm_color(arm)): arm for arm in ARMS}
SCOPES = ("all", "k4")


@pytest.fixture(scope="module")
def sweep_frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    sweep = make_sweep(root, "figs", arms=ARMS, ks=KS, seeds=SEEDS, special=False, exclude=EXCLUDE)
    runs = collect_runs(sweep.results_dir, sweep.sweep)
    curves = collect_curves(sweep.results_dir, sweep.sweep, runs)
    return runs, curves, time_to_target(curves, runs, TARGETS)


def _cells(ks):
    return [(arm, k, seed) for arm in ARMS for k in ks if (arm, k) not in EXCLUDE for seed in SEEDS]


def report_figure(name: str, runs, curves, targets):
    draw = {
        "dev_curves": lambda: plots.figure_dev_curves(curves),
        "time_to_target": lambda: plots.figure_time_to_target(targets),
        "train_loss": lambda: plots.figure_train_loss(curves),
        "final_scores": lambda: plots.figure_final_scores(runs),
        "step_time": lambda: plots.figure_step_time(runs),
        "grad_cos": lambda: plots.figure_grad_cos(curves),
    }
    assert set(draw) == set(plots.FIGURES)  # a new figure of the report is checked here too
    return draw[name]()


def sharpness_figure(name: str, ks):
    frame, result = sharpness_inputs(_cells(ks))
    opts = result["opts"]
    draw = {
        "hessian": lambda: sharpness_figures.figure_hessian(frame),
        "adaptive": lambda: sharpness_figures.figure_adaptive(frame, opts),
        "curves_1d": lambda: sharpness_figures.figure_curves_1d(frame, result["curves"], opts),
        "surface_2d": lambda: sharpness_figures.figure_surface_2d(frame, result["curves"], result["plan"], opts),
        "interpolation": lambda: sharpness_figures.figure_interpolation(result["interp"]),
    }
    assert set(draw) == set(sharpness_figures.FIGURES)
    return draw[name](), frame


# ---------------------------------------------------------------------------------------------------------------------
# the checks


def _k_of_title(title: str) -> list[int]:
    return [int(k) for k in re.findall(r"\bk = (\d+)", title)]


def _names(arm: str, text: str) -> bool:
    """Whether `text` names the arm: its legend label or its name as a word (sam_last is not named by
    sam_last_only)."""
    text = " ".join(text.split())  # a label wrapped to fit the canvas names the arm as well
    return arm_label(arm) in text or re.search(rf"(?<![\w]){re.escape(arm)}(?![\w])", text) is not None


def assert_inside_canvas(fig) -> None:
    fig.draw_without_rendering()  # the constrained layout runs at draw time, as in savefig
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    tol = 1.0  # pixel
    artists = [*fig.texts, *fig.legends, *(ax.title for ax in fig.axes if ax.get_title())]
    assert fig.texts or any(ax.get_title() for ax in fig.axes), "a figure without a title"
    for artist in artists:
        box = artist.get_window_extent(renderer)
        what = (
            artist.get_text()
            if hasattr(artist, "get_text")
            else "legend: " + " | ".join(t.get_text() for t in artist.get_texts())
        )
        assert box.x0 >= -tol and box.x1 <= width + tol, f"cut at the left/right edge: {what!r} spans {box}"
        assert box.y0 >= -tol and box.y1 <= height + tol, f"cut at the bottom/top edge: {what!r} spans {box}"
    tight = fig.get_tightbbox(renderer)  # inches
    w_in, h_in = fig.get_size_inches()
    assert tight.x0 >= -tol / fig.dpi and tight.x1 <= w_in + tol / fig.dpi, f"drawing {tight} outside {w_in} in"
    assert tight.y0 >= -tol / fig.dpi and tight.y1 <= h_in + tol / fig.dpi, f"drawing {tight} outside {h_in} in"


def _arm_artists(ax) -> list[tuple[str, np.ndarray]]:
    """(arm, points) of every line and dot set in the axes drawn in an arm's colour."""
    out = []
    for line in ax.lines:
        arm = COLOR_ARM.get(to_hex(line.get_color()))
        xy = np.asarray(line.get_xydata(), dtype=float)
        if arm is not None and len(xy):
            out.append((arm, xy))
    for coll in ax.collections:
        offsets = np.asarray(coll.get_offsets(), dtype=float)
        if coll.__class__.__name__ != "PathCollection" or not len(offsets):
            continue
        colors = [*coll.get_facecolors(), *coll.get_edgecolors()]
        arm = next((COLOR_ARM[to_hex(c)] for c in colors if c[3] > 0 and to_hex(c) in COLOR_ARM), None)
        if arm is not None:
            out.append((arm, offsets[np.lexsort(offsets.T[::-1])]))
    return out


def assert_no_arm_hidden(fig) -> None:
    for ax in fig.axes:
        drawn = _arm_artists(ax)
        for (arm_a, a), (arm_b, b) in itertools.combinations(drawn, 2):
            same = arm_a != arm_b and a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)
            assert not same, f"{ax.get_title()!r}: {arm_a} and {arm_b} drawn with the same data, one hides the other"
        xs = {round(float(x), 9) for _, xy in drawn for x in xy[:, 0] if np.isfinite(x)}
        assert len(xs) != 1, f"{ax.get_title()!r}: the panel is one x value ({xs})"


def _column_title(fig, ax) -> str:
    """The axes' title, or that of the titled axes above it in its column (a grid titles its top row only)."""
    if ax.get_title():
        return ax.get_title()
    spec = ax.get_subplotspec()
    for other in fig.axes:
        o = other.get_subplotspec()
        if other.get_title() and spec is not None and o is not None and o.colspan == spec.colspan:
            return other.get_title()
    return ""


def assert_arms_named(fig, present: dict[int, set[str]]) -> None:
    """`present`: {k: arms with data at k}. A panel titled with its k names each of them in its legend entries; a
    panel of several k names each (arm, k) in one label (or the arm in its title and k in a label); the figure names
    every arm somewhere (legend, title, panel title: "no run at k = 4: sam_micro" counts)."""
    legend_text = " | ".join(t.get_text() for legend in fig.legends for t in legend.get_texts())
    for ax in fig.axes:
        if not _arm_artists(ax):
            continue
        labels = ax.get_legend_handles_labels()[1]
        ks = _k_of_title(_column_title(fig, ax))
        if len(ks) == 1:
            for arm in sorted(present.get(ks[0], ())):
                assert any(_names(arm, label) for label in labels), f"k = {ks[0]}: {arm} not named in {labels}"
        elif any(_k_of_title(label) for label in labels):  # lines labelled "<arm>, k = N", or "k = N" in an arm's panel
            title = ax.get_title()
            for k, arms in present.items():
                for arm in sorted(arms):
                    if _names(arm, title):
                        assert any(k in _k_of_title(lb) for lb in labels), f"{title!r}: no k = {k} in {labels}"
                    elif not any(_names(a, title) for a in ARMS):
                        assert any(_names(arm, lb) and k in _k_of_title(lb) for lb in labels), (
                            f"{arm}, k = {k}: {labels}"
                        )
    titles = [t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes]
    everything = legend_text + " | " + " | ".join(titles)
    for arm in sorted(set().union(*present.values())):
        assert _names(arm, everything), f"{arm} named nowhere in the figure"


def assert_panels_share_k(fig) -> None:
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    ks = {k for title in titles for k in _k_of_title(title)}
    if len(ks) > 1:
        assert all(re.fullmatch(r"accumulation k = \d+", t) for t in titles), f"panels at different k: {titles}"
        assert len(set(titles)) == len(titles), f"two panels of one k column: {titles}"


def check(fig, present: dict[int, set[str]]) -> None:
    assert fig is not None
    assert_inside_canvas(fig)
    assert_no_arm_hidden(fig)
    assert_arms_named(fig, present)
    assert_panels_share_k(fig)


# ---------------------------------------------------------------------------------------------------------------------
# the figures


def _present(frame: pd.DataFrame, arms=ARMS) -> dict[int, set[str]]:
    return {int(k): set(g["arm"]) & set(arms) for k, g in frame.groupby("k")}


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_report_figure_layout(sweep_frames, name, scope):
    runs, curves, targets = sweep_frames
    if scope == "k4":
        runs, curves, targets = runs[runs["k"] == 4], curves[curves["k"] == 4], targets[targets["k"] == 4]
    fig = report_figure(name, runs, curves, targets)
    present = _present(runs)
    if name == "grad_cos":  # SAM arms only, and none at k = 1, where g_last = g_full (cos = 1 exactly)
        present = {k: arms - {"adamw"} for k, arms in present.items() if k != 1}
    if name == "time_to_target":
        present = _present(targets)
    check(fig, present)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", list(sharpness_figures.FIGURES))
def test_sharpness_figure_layout(name, scope):
    ks = (4,) if scope == "k4" else KS
    fig, frame = sharpness_figure(name, ks)
    present = _present(frame)
    if name == "interpolation":  # the arms of the pairs
        pairs = {arm for pair in INTERPOLATION_PAIRS for arm in pair}
        present = {k: arms & pairs for k, arms in present.items()}
    check(fig, present)


# ---------------------------------------------------------------------------------------------------------------------
# what a figure leaves out, it says


def test_grad_cos_leaves_out_k1_where_the_cosine_is_one_by_construction_and_says_so(sweep_frames):
    _, curves, _ = sweep_frames
    k1 = curves[(curves["metric"] == "diag/grad_cos") & (curves["k"] == 1)]
    assert len(k1) and (k1["value"] == 1.0).all()  # the fixture logs the trivial value at k = 1
    fig = plots.figure_grad_cos(curves)
    assert [ax.get_title() for ax in fig.axes] == ["accumulation k = 4"]
    assert "k = 1 not drawn" in " ".join(fig.texts[0].get_text().split())
    # a k = 1 value that is not 1 is a finding, not a triviality: the panel is drawn
    broken = curves.copy()
    broken.loc[k1.index[:1], "value"] = 0.5
    assert [ax.get_title() for ax in plots.figure_grad_cos(broken).axes] == ["accumulation k = 1", "accumulation k = 4"]


def test_time_to_target_names_the_k_it_leaves_out(sweep_frames):
    _, _, targets = sweep_frames
    unreached = targets.assign(reached=targets["reached"] & (targets["k"] != 1))  # the k = 1 row reaches nothing
    fig = plots.figure_time_to_target(unreached)
    assert [ax.get_title() for ax in fig.axes] == ["accumulation k = 4"]
    assert "k = 1 left out: no run there reached a target" in " ".join(fig.texts[0].get_text().split())
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert " ".join(labels[-1].split()) == "not reached (drawn at the last evaluation)"  # once, after the arms


def test_the_2d_contours_are_planned_at_one_k():
    _, result = sharpness_inputs(_cells(KS))
    surface = result["plan"].surface
    by_id = {r.run_id: r for r in result["runs"]}
    assert sorted(surface) == sorted(set(ARMS) - {"sam_micro"})  # m-SAM has no run at k = 4
    assert {by_id[rid].k for rid in surface.values()} == {4} and {by_id[rid].seed for rid in surface.values()} == {0}
    fig = sharpness_figures.figure_surface_2d(
        *sharpness_inputs(_cells(KS))[:1], result["curves"], result["plan"], result["opts"]
    )
    title = " ".join(fig.texts[0].get_text().split())
    assert "at k = 4, seed 0" in title and "no run at k = 4: sam_micro" in title


def test_fit_to_canvas_wraps_a_title_and_legend_labels_wider_than_the_figure():
    from analysis.figure_style import legend_below, new_figure, styled

    words = " ".join(f"word{i}" for i in range(36))  # about 2 figure widths at the figure title's size

    @styled
    def drawn():
        fig, axes = new_figure(1)
        for i, arm in enumerate(ARMS[:3]):
            axes[0][0].plot([0, 1], [i, i + 1], color=arm_color(arm), label=f"{arm_label(arm)} {words}")
        fig.suptitle(words)
        legend_below(fig, axes)
        return fig

    fig = drawn()
    assert_inside_canvas(fig)
    assert fig.legends[0]._ncols == 1 and "\n" in fig.legends[0].get_texts()[0].get_text()
    assert fig.texts[0].get_text().count("\n") >= 1  # the words are all still there, on 2 or more lines
    assert " ".join(fig.texts[0].get_text().split()) == words


def test_interpolation_between_identical_runs_says_it_is_flat():
    fig, _ = sharpness_figure("interpolation", KS)
    titles = {" ".join(ax.get_title().split()) for ax in fig.axes}
    assert "SAM, full replay → SAM, last-batch replay (bug) (k = 1: the two are identical runs, a flat line)" in titles
    assert "AdamW → SAM, full replay" in titles  # different models: no such note
