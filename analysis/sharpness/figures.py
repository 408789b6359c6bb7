"""The sharpness figures (matplotlib Figure + Agg, never pyplot; colours per arm as in analysis.plots; each one
`styled`, so its title and legend are fitted into the canvas)."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from analysis.figure_style import (
    STYLE,
    arm_color,
    arm_label,
    group_label,
    identical_arm_groups,
    legend_below,
    new_figure,
    save,
    seed_range,
    styled,
)
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


@styled
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


@styled
def figure_adaptive(frame, opts: SharpnessConfig):
    """Average- and worst-case adaptive sharpness against ρ: per arm and k the mean over seeds with min–max bars.
    Arms whose runs gave the same numbers at every seed and ρ (at k = 1 sam_last and sam_last_only are sam_full's
    runs) are one line, labelled with every arm it stands for."""

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
        columns = {f"{prefix}{rho_key(r)}": r for r in rhos}
        for k in ks:
            at_k = frame[frame["k"] == k]
            long = at_k.melt(id_vars=["arm", "seed"], value_vars=list(columns), var_name="rho", value_name="value")
            long["rho"] = long["rho"].map(columns)
            for group in identical_arm_groups(long, arms, "rho"):
                arm = group[0]
                sub = at_k[at_k["arm"] == arm]
                stats = [seed_range(sub[c].dropna().to_numpy(dtype=float)) for c in columns]
                means = [s[0] for s in stats]
                lows = [s[0] - s[1] for s in stats]
                highs = [s[2] - s[0] for s in stats]
                label = f"{arm_label(arm)}, k = {k}" if len(group) == 1 else group_label(group, k)
                ax.errorbar(
                    rhos,
                    means,
                    yerr=[lows, highs],
                    color=arm_color(arm, arms),
                    linestyle=_k_style(ks, k),
                    marker="o",
                    markersize=3,
                    capsize=3,
                    label=label,
                )
        ax.set_xscale("log")
        ax.set_xlabel("ρ")
        ax.set_ylabel("L(w + δ) − L(w), landscape subset")
        ax.set_title(title)
    fig.suptitle("Adaptive sharpness — mean and min–max over seeds")
    legend_below(fig, axes)
    return fig


@styled
def figure_curves_1d(frame, curves: dict, opts: SharpnessConfig):
    """One panel per arm: each run's loss along the filter-normalised directions (thin, mean over directions; not
    drawn for a k with one run) and the mean over runs per k (thick). A k at which the arm's runs gave another arm's
    curves exactly (k = 1: sam_last is sam_full) says so in its label ("k = 1 (≡ sam_full)", the title explains ≡)."""

    if opts.curve_directions == 0:
        return None
    xs = alphas(opts.curve_points, opts.curve_span)
    arms = list(dict.fromkeys(frame["arm"]))
    ks = sorted(set(int(k) for k in frame["k"]))
    same_as = {}  # (arm, k) -> the first arm of its group of identical runs
    for k in ks:
        at_k = frame[frame["k"] == k]
        long = pd.DataFrame(
            [
                {"arm": r.arm, "seed": r.seed, "alpha": i, "value": v}
                for r in at_k.itertuples()
                for i, v in enumerate(np.mean(np.asarray(curves[r.run_id]["curve_1d"], dtype=float), axis=0))
            ]
        )
        for group in identical_arm_groups(long, arms, "alpha"):
            same_as.update({(arm, k): group[0] for arm in group[1:]})
    fig, axes = new_figure(len(arms), width=3.6)
    for ax, arm in zip(axes[0], arms):
        color = arm_color(arm, arms)
        for k in ks:
            ids = frame[(frame["arm"] == arm) & (frame["k"] == k)]["run_id"]
            per_run = [np.mean(np.asarray(curves[r]["curve_1d"], dtype=float), axis=0) for r in ids]
            for y in per_run if len(per_run) > 1 else []:  # one run: its line is the mean's
                ax.plot(xs, y, color=color, linestyle=_k_style(ks, k), linewidth=0.7, alpha=0.35)
            if per_run:
                twin = same_as.get((arm, k))
                label = f"k = {k}" + (f" (≡ {twin})" if twin else "")
                ax.plot(xs, np.mean(per_run, axis=0), color=color, linestyle=_k_style(ks, k), linewidth=2, label=label)
        ax.set_title(arm_label(arm))
        ax.set_xlabel("α (filter-normalised direction)")
        ax.set_ylabel("landscape-subset loss")
        ax.legend(loc="upper center")  # a loss curve around its minimum leaves the top centre free
    twins = "; ≡: the very runs of that arm (identical at k = 1)" if same_as else ""
    fig.suptitle(
        f"1D loss curves L(w + α d), {opts.curve_directions} directions (the same seeds for every model); "
        f"thin: runs, thick: mean per k{twins}"
    )
    return fig


@styled
def figure_surface_2d(frame, curves: dict, plan: Plan, opts: SharpnessConfig):
    """One filled contour per arm on shared levels: L(w + α d1 + β d2) on the landscape subset, every panel at one
    k (the plan's: the sweep's largest k; should a plan mix k, the largest k's panels alone are drawn). The title
    names k and the seed, and the arms without a contour at that k."""

    items = [(arm, rid) for arm, rid in plan.surface.items() if curves.get(rid, {}).get("surface") is not None]
    if not items:
        return None
    rows = {rid: frame[frame["run_id"] == rid].iloc[0] for _, rid in items}
    k = max(int(rows[rid]["k"]) for _, rid in items)
    items = [(arm, rid) for arm, rid in items if int(rows[rid]["k"]) == k]
    seeds = sorted({int(rows[rid]["seed"]) for _, rid in items})
    missing = [arm for arm in dict.fromkeys(frame["arm"]) if arm not in dict(items)]
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
        filled = ax.contourf(grid, grid, np.clip(z, low, high).T, levels=levels, cmap="viridis", extend="max")
        ax.contour(grid, grid, np.clip(z, low, high).T, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
        ax.plot([0], [0], marker="x", color="red")
        ax.set_title(arm_label(arm) if len(seeds) == 1 else f"{arm_label(arm)} (seed {rows[rid]['seed']})")
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.grid(False)
    fig.colorbar(filled, ax=axes.ravel().tolist(), label="landscape-subset loss\n(clipped at the 95th percentile)")
    seed = f", seed {seeds[0]}" if len(seeds) == 1 else ""
    title = f"2D loss surfaces along two filter-normalised directions at k = {k}{seed} (x: the checkpoint)"
    if missing:
        title += f"\nno run at k = {k}: {', '.join(missing)}"
    fig.suptitle(title)
    return fig


def _flat(values, tol: float = 1e-5) -> bool:
    """Whether a curve is constant up to fp32 rounding: the loss of (1 − α)·θ + α·θ is θ's loss to ~1e-7 relative
    (the interpolated weights are rounded), a real path between two models varies by far more."""
    v = np.asarray(values, dtype=float)
    return bool(np.all(np.isfinite(v)) and np.ptp(v) <= tol * max(1.0, float(np.abs(v).max())))


@styled
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
        mine = [p for p in interp if (p["a"].arm, p["b"].arm) == (a, b)]
        for p in mine:
            k = p["a"].k
            ax.plot(p["alpha"], p["train"], color=colors[k], linewidth=1.2, label=f"k = {k}, train (landscape subset)")
            ax.plot(p["alpha"], p["dev"], color=colors[k], linewidth=1.2, linestyle="--", label=f"k = {k}, dev")
        # a pair of identical runs (k = 1: sam_full and sam_last) is one model twice: its line is flat, say why
        flat = sorted({p["a"].k for p in mine if _flat(p["train"]) and _flat(p["dev"])})
        note = f"\n(k = {', '.join(map(str, flat))}: the two are identical runs, a flat line)" if flat else ""
        ax.set_xlabel(f"α (0: {arm_label(a)}, 1: {arm_label(b)})")
        ax.set_ylabel("loss")
        ax.set_title(f"{arm_label(a)} → {arm_label(b)}{note}")
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
