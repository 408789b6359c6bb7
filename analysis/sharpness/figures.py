"""The sharpness figures (matplotlib Figure + Agg, never pyplot; colours per arm as in analysis.plots)."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from analysis.figure_style import STYLE, arm_color, arm_label, legend_below, new_figure, save, seed_range
from analysis.sharpness.options import SharpnessConfig, alphas, rho_key
from analysis.sharpness.plan import Plan
from analysis.sharpness.tables import MARK, unusable

FIGURES = {
    "hessian": "sharpness_hessian.png",
    "adaptive": "sharpness_adaptive.png",
    "curves_1d": "sharpness_curves_1d.png",
    "surface_2d": "sharpness_surface_2d.png",
    "interpolation": "sharpness_interpolation.png",
}

_K_STYLES = ("-", "--", ":", "-.")


def _k_style(ks: Sequence[int], k: int):
    return _K_STYLES[list(ks).index(k) % len(_K_STYLES)]


def figure_hessian(frame):
    """λmax and tr(H) per k (x) and arm: mean with a min–max bar over the usable runs, single runs as dots; an
    unusable value (λmax not converged, tr(H) too noisy: tables.VALIDITY) is drawn as a hollow † marker and left out
    of the mean and bar."""
    panels = [
        (c, label)
        for c, label in (("lambda_max", "λmax (top Hessian eigenvalue)"), ("trace", "tr(H) (Hutchinson)"))
        if frame[c].notna().any()
    ]
    if not panels:
        return None
    arms = list(dict.fromkeys(frame["arm"]))
    ks = sorted(set(int(k) for k in frame["k"]))
    offsets = dict(zip(arms, np.linspace(-0.3, 0.3, len(arms)) if len(arms) > 1 else [0.0]))
    fig, axes = new_figure(len(panels))
    any_marked = False
    for ax, (column, label) in zip(axes[0], panels):
        bad = unusable(frame, column)
        n_bad = int(bad.sum())
        for arm in arms:
            xs, means, err_low, err_high = [], [], [], []
            for i, k in enumerate(ks):
                cell = (frame["arm"] == arm) & (frame["k"] == k)
                values = frame[cell & ~bad][column].dropna().to_numpy(dtype=float)
                marked = frame[cell & bad][column].dropna().to_numpy(dtype=float)
                x = i + offsets[arm]
                if marked.size:
                    any_marked = True
                    ax.scatter(
                        np.full(marked.size, x),
                        marked,
                        s=28,
                        marker="o",
                        facecolors="none",
                        edgecolors=arm_color(arm, arms),
                        linewidths=1.0,
                        label=f"{MARK} not converged / too noisy (left out)",
                    )
                if values.size == 0:
                    continue
                mean, low, high = seed_range(values)
                ax.scatter(np.full(values.size, x), values, s=10, color=arm_color(arm, arms), alpha=0.35, linewidths=0)
                xs.append(x)
                means.append(mean)
                err_low.append(mean - low)
                err_high.append(high - mean)
            if xs:
                ax.errorbar(
                    xs,
                    means,
                    yerr=[err_low, err_high],
                    fmt="o",
                    color=arm_color(arm, arms),
                    capsize=4,
                    markersize=5,
                    label=arm_label(arm),
                )
        ax.set_xticks(range(len(ks)), [f"k = {k}" for k in ks])
        ax.set_xlabel("gradient accumulation steps")
        total = int(frame[column].notna().sum())
        ax.set_title(label if not n_bad else f"{label}\n{MARK} {n_bad} of {total} runs left out")
    fig.suptitle(
        "Hessian sharpness on the Hessian subset — mean and min–max over seeds (dots: runs"
        + (f"; hollow {MARK}: left out)" if any_marked else ")")
    )
    legend_below(fig, axes)
    return fig


def figure_adaptive(frame, opts: SharpnessConfig):
    """Average- and worst-case adaptive sharpness against ρ: per arm and k the mean over seeds with min–max bars."""

    panels = [
        ("avg_sharpness_rho", opts.rhos_average, "average-case (elementwise Gaussian, σ_j = ρ|w_j|)"),
        ("worst_sharpness_rho", opts.rhos_worst, "worst-case (ball ‖δ/|w|‖₂ ≤ ρ, gradient ascent)"),
    ]
    panels = [p for p in panels if any(frame[f"{p[0]}{rho_key(r)}"].notna().any() for r in p[1])]
    if not panels:
        return None
    arms = list(dict.fromkeys(frame["arm"]))
    ks = sorted(set(int(k) for k in frame["k"]))
    fig, axes = new_figure(len(panels))
    for ax, (prefix, rhos, title) in zip(axes[0], panels):
        for arm in arms:
            for k in ks:
                sub = frame[(frame["arm"] == arm) & (frame["k"] == k)]
                if sub.empty:
                    continue
                stats = [seed_range(sub[f"{prefix}{rho_key(r)}"].dropna().to_numpy(dtype=float)) for r in rhos]
                means = [s[0] for s in stats]
                lows = [s[0] - s[1] for s in stats]
                highs = [s[2] - s[0] for s in stats]
                ax.errorbar(
                    rhos,
                    means,
                    yerr=[lows, highs],
                    color=arm_color(arm, arms),
                    linestyle=_k_style(ks, k),
                    marker="o",
                    markersize=3,
                    capsize=3,
                    label=f"{arm_label(arm)}, k = {k}",
                )
        ax.set_xscale("log")
        ax.set_xlabel("ρ")
        ax.set_ylabel("L(w + δ) − L(w), landscape subset")
        ax.set_title(title)
    fig.suptitle("Adaptive sharpness — mean and min–max over seeds")
    legend_below(fig, axes)
    return fig


def figure_curves_1d(frame, curves: dict, opts: SharpnessConfig):
    """One panel per arm: each run's loss along the filter-normalised directions (thin, mean over directions) and the
    mean over runs per k (thick)."""

    if opts.curve_directions == 0:
        return None
    xs = alphas(opts.curve_points, opts.curve_span)
    arms = list(dict.fromkeys(frame["arm"]))
    ks = sorted(set(int(k) for k in frame["k"]))
    fig, axes = new_figure(len(arms), width=3.6)
    for ax, arm in zip(axes[0], arms):
        color = arm_color(arm, arms)
        for k in ks:
            ids = frame[(frame["arm"] == arm) & (frame["k"] == k)]["run_id"]
            per_run = [np.mean(np.asarray(curves[r]["curve_1d"], dtype=float), axis=0) for r in ids]
            for y in per_run:
                ax.plot(xs, y, color=color, linestyle=_k_style(ks, k), linewidth=0.7, alpha=0.35)
            if per_run:
                ax.plot(
                    xs, np.mean(per_run, axis=0), color=color, linestyle=_k_style(ks, k), linewidth=2, label=f"k = {k}"
                )
        ax.set_title(arm_label(arm))
        ax.set_xlabel("α (filter-normalised direction)")
        ax.set_ylabel("landscape-subset loss")
        ax.legend()
    fig.suptitle(
        f"1D loss curves L(w + α d), {opts.curve_directions} directions (the same seeds for every model); "
        "thin: runs, thick: mean per k"
    )
    return fig


def figure_surface_2d(frame, curves: dict, plan: Plan, opts: SharpnessConfig):
    """One filled contour per arm on shared levels: L(w + α d1 + β d2) on the landscape subset."""

    items = [(arm, rid) for arm, rid in plan.surface.items() if curves.get(rid, {}).get("surface") is not None]
    if not items:
        return None
    grid = alphas(opts.surface_points, opts.surface_span)
    surfaces = [np.asarray(curves[rid]["surface"], dtype=float) for _, rid in items]
    finite = np.concatenate([s[np.isfinite(s)].ravel() for s in surfaces])
    low, high = float(finite.min()), float(np.percentile(finite, 95))
    if not high > low:
        high = low + 1e-6
    levels = np.linspace(low, high, 13)
    fig, axes = new_figure(len(items), width=3.8, height=3.4)
    filled = None
    for ax, (arm, rid), z in zip(axes[0], items, surfaces):
        row = frame[frame["run_id"] == rid].iloc[0]
        filled = ax.contourf(grid, grid, np.clip(z, low, high).T, levels=levels, cmap="viridis", extend="max")
        ax.contour(grid, grid, np.clip(z, low, high).T, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
        ax.plot([0], [0], marker="x", color="red")
        ax.set_title(f"{arm_label(arm)} (k = {row['k']}, seed {row['seed']})")
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.grid(False)
    fig.colorbar(filled, ax=axes.ravel().tolist(), label="landscape-subset loss (clipped at the 95th percentile)")
    fig.suptitle("2D loss surfaces along two filter-normalised directions (x: the checkpoint)")
    return fig


def figure_interpolation(interp: list):
    """One panel per arm pair: L((1 − α) θ_a + α θ_b) on the train (solid) and dev (dashed) subsets, per k and seed."""
    if not interp:
        return None
    kinds = list(dict.fromkeys((p["a"].arm, p["b"].arm) for p in interp))
    ks = sorted({p["a"].k for p in interp})
    cmap = matplotlib.colormaps["viridis"]
    colors = {k: cmap(0.15 + 0.7 * i / max(1, len(ks) - 1)) for i, k in enumerate(ks)}
    fig, axes = new_figure(len(kinds), width=4.8)
    for ax, (a, b) in zip(axes[0], kinds):
        for p in (p for p in interp if (p["a"].arm, p["b"].arm) == (a, b)):
            k = p["a"].k
            ax.plot(p["alpha"], p["train"], color=colors[k], linewidth=1.2, label=f"k = {k}, train (landscape subset)")
            ax.plot(p["alpha"], p["dev"], color=colors[k], linewidth=1.2, linestyle="--", label=f"k = {k}, dev")
        ax.set_xlabel(f"α (0: {arm_label(a)}, 1: {arm_label(b)})")
        ax.set_ylabel("loss")
        ax.set_title(f"{arm_label(a)} → {arm_label(b)}")
    fig.suptitle("Linear interpolation between checkpoints of the same seed and k (one line per seed)")
    legend_below(fig, axes)
    return fig


def draw_figures(result: dict, frame, fig_dir: Path) -> dict[str, Path]:
    opts = result["opts"]
    for name in FIGURES.values():  # a figure that is no longer drawn must not linger from an earlier call
        (fig_dir / name).unlink(missing_ok=True)
    written = {}
    with matplotlib.rc_context(STYLE):
        figures = {
            "hessian": figure_hessian(frame),
            "adaptive": figure_adaptive(frame, opts),
            "curves_1d": figure_curves_1d(frame, result["curves"], opts),
            "surface_2d": figure_surface_2d(frame, result["curves"], result["plan"], opts),
            "interpolation": figure_interpolation(result["interp"]),
        }
        for name, fig in figures.items():
            if fig is not None:
                written[name] = save(fig, fig_dir / FIGURES[name])
    return written
