"""sharpness.md: the report's sharpness section (setup, tables, Kendall tau with its caveats, figures)."""

import dataclasses
import math
from pathlib import Path

import pandas as pd

from analysis.collect import arm_order
from analysis.report.formatting import fmt_p, md_table
from analysis.sharpness.figures import FIGURES
from analysis.sharpness.measure import _g
from analysis.sharpness.options import SharpnessConfig, _defaults, rho_key
from analysis.sharpness.qa import Subsets
from analysis.sharpness.tables import (
    LOSS_COLUMNS,
    MARK,
    TAU_BOOT_SEED,
    TAU_MIN_N,
    TAU_N_BOOT,
    VALIDITY,
    measure_columns,
    unusable,
)


def _cell(mean: float, half: float, n: int, left: int = 0) -> str:
    """mean ± t half width (n = usable runs), with `left` unusable runs marked † (left out of the mean)."""
    mark = f"; {left} {MARK} left out" if left else ""
    if n == 0 or math.isnan(mean):
        return f"{MARK} (n=0{mark})" if left else "–"
    if n < 2 or math.isnan(half):
        return f"{mean:.4g} (n={n}{mark})"
    return f"{mean:.4g} ± {half:.2g} (n={n}{mark})"


def usable_counts(frame) -> dict[str, tuple[int, int]]:
    """{measure column of VALIDITY: (usable values, measured values)}."""
    out = {}
    for column in VALIDITY:
        if column in frame:
            measured = int(pd.to_numeric(frame[column], errors="coerce").notna().sum())
            out[column] = (measured - int(unusable(frame, column).sum()), measured)
    return out


def count_sentence(frame, column: str, what: str) -> str:
    """'λmax converged in N of M runs; the others are marked † and left out of …' (or that all did)."""
    good, total = usable_counts(frame).get(column, (0, 0))
    if total == 0:
        return f"{what}: not measured."
    if good == total:
        return f"{what} in {good} of {total} runs: every value is used."
    return (
        f"{what} in {good} of {total} runs; the others are marked {MARK} and left out of the means, the paired "
        f"verdicts, Kendall's τ and the figures' means."
    )


def _setup_lines(result: dict, frame) -> list[str]:
    opts, data, plan, runs = result["opts"], result["data"], result["plan"], result["runs"]
    rhos_a = ", ".join(rho_key(r) for r in opts.rhos_average)
    rhos_w = ", ".join(rho_key(r) for r in opts.rhos_worst)
    step = (
        opts.worst_step_size
        if opts.worst_step_size is not None
        else (2.0 / opts.worst_steps if opts.worst_steps else 0.0)
    )
    hess = frame[frame["hessian_measured"]]
    steps = hess["lambda_max_iters"] if len(hess) else []
    residuals = hess["lambda_max_residual"].dropna() if len(hess) else []
    trace_rse = (hess["trace_se"] / hess["trace"].abs()).dropna() if len(hess) else []
    hess_runs = (
        "every run"
        if len(plan.hessian) == len(runs)
        else f"{len(plan.hessian)} of {len(runs)} runs (the first {opts.hessian_seeds} seed(s); "
        f"hessian_seeds={opts.hessian_seeds})"
    )
    surfaces = ", ".join(f"{arm}: `{rid}`" for arm, rid in plan.surface.items()) or "none"
    per_model = {key: [result["plans"][r.run_id][key] for r in runs] for key in ("forward_landscape", "hvp")}
    mean = lambda key: sum(frame[key]) / len(frame)  # noqa: E731
    defaults = _defaults()
    diffs = [
        f"`{k}={v}`"
        for k, v in dataclasses.asdict(opts).items()
        if k not in ("results_dir", "sweep", "out", "threads", "jobs", "dry_run") and v != defaults[k]
    ]
    changed = f"This call changed {', '.join(diffs)} from the defaults." if diffs else "This call used the defaults."
    lines = [
        "### Setup",
        "",
        "- **Loss**: each run's `checkpoint/final` loaded with eager attention in fp32, eval mode (no dropout); the "
        "loss is the model's own QA loss with the start/end positions (mean of the start- and end-token "
        "cross-entropy) over a fixed subset, so every model is measured on the same features.",
        f"- **Data**: the data of `{runs[0].run_id}`'s config (every measured run shares its data settings and "
        f"model: checked). Train subset: {Subsets.size(data.train)} of {data.train_total} train features, drawn "
        f"with seed {opts.seed}; dev subset: {Subsets.size(data.dev)} of {data.dev_total} dev features (seed "
        f"{opts.seed + 1}); these two give the train and dev loss. The measures that need many passes use "
        f"prefixes of them: the *landscape subset* (the first {Subsets.size(data.landscape)} train features; the "
        f"first {Subsets.size(data.landscape_dev)} dev features for the dev side of the interpolation) for the "
        f"adaptive sharpness, the curves, the contours and the interpolation, and the *Hessian subset* (the first "
        f"{Subsets.size(data.hessian)} train features) for λmax and the trace.",
        f"- **λmax**: the largest Ritz value of Lanczos with full reorthogonalisation on Hessian-vector products "
        f"(double backward), at most {opts.eigen_iters} steps from a seeded Gaussian start, stopping when the Ritz "
        f"pair (θ, y) has ‖Hy − θy‖ / |θ| ≤ {opts.eigen_tol:g}; the residual is then measured with one more "
        f"product and recorded per run (`lambda_max_residual`, `lambda_max_converged`, `lambda_max_iters` in "
        f"`sharpness.csv`). It converges to the largest eigenvalue also off a minimum (no shift needed). "
        + count_sentence(frame, "lambda_max", "λmax converged")
        + (
            f" Lanczos steps used: {int(min(steps))}–{int(max(steps))}; largest residual {max(residuals):.2g}."
            if len(residuals)
            else ""
        ),
        f"- **tr(H)**: Hutchinson's estimator with {opts.trace_samples} Rademacher probes"
        + (
            ", deflated by the Lanczos basis Q of λmax (tr(QHQᵀ) = tr(T) exactly, plus Hutchinson on the probes "
            "projected off span(Q): unbiased, with the top directions' variance removed; Gambhir et al. 2017)"
            if opts.eigen_iters > 0
            else ""
        )
        + f", reported as value ± standard error (sample std of the probe terms / √{opts.trace_samples}); a trace "
        f"is used only when "
        f"SE ≤ {opts.trace_max_rel_se:g}·|tr(H)| (the rule of `trace_reliable`). "
        + count_sentence(frame, "trace", "tr(H) precise enough")
        + (f" SE / |tr(H)|: {min(trace_rse):.2g}–{max(trace_rse):.2g}." if len(trace_rse) else ""),
        f"- **Average-case adaptive sharpness**: E[L(w + δ) − L(w)] with elementwise normalisation, "
        f"δ_j ~ N(0, (ρ·|w_j|)²) (Andriushchenko et al. 2023), {opts.average_samples} antithetic pairs (±δ) per ρ, "
        f"the same draws for every ρ and every model; ρ ∈ {{{rhos_a}}}.",
        f"- **Worst-case adaptive sharpness**: max L(w + δ) − L(w) over the adaptive ball ‖δ / |w|‖₂ ≤ ρ, by "
        f"{opts.worst_steps} projected gradient-ascent step{'s' if opts.worst_steps != 1 else ''} of size "
        f"{step:g}·ρ in the normalised coordinates, "
        f"from a seeded start at radius 0.1·ρ (a lower bound of the maximum); ρ ∈ {{{rhos_w}}}.",
        f"- **1D curves**: L(w + α·d) at {opts.curve_points} points α ∈ [−{opts.curve_span:g}, "
        f"{opts.curve_span:g}] along {opts.curve_directions} filter-normalised random directions (Li et al. 2018: "
        f"every row of a weight matrix scaled to the norm of that row of w; biases and LayerNorm not moved), drawn "
        f"from seeds {opts.seed}…{opts.seed + max(opts.curve_directions, 1) - 1}, the same for every model.",
        f"- **2D contours**: {opts.surface_points}×{opts.surface_points} grid over the first two directions, "
        f"[−{opts.surface_span:g}, {opts.surface_span:g}]², one per arm at the sweep's largest k (its first seed; "
        f"none for an arm without a run there): {surfaces}.",
        f"- **Interpolation**: L((1 − α)·θ_a + α·θ_b) at {opts.interp_points} points α ∈ [0, 1] on the landscape "
        f"subset and the same number of dev features, for AdamW → SAM (full) and SAM (full) → SAM (last) with the "
        f"same seed and k "
        f"({len(result['interp'])} pairs).",
        "- **Generalisation gap**: the τ table uses two. *Subset gap* (primary): dev − train loss on the two "
        "subsets above, eval mode, the same features for every model. *Summary gap*: final `dev/loss` − final "
        "`train/loss` from each run's summary.json (the dev loss over the whole dev set minus the clean training "
        "loss of the last update's window, measured with dropout on).",
        f"- **Budget**: the defaults are sized so that the default sweep (`configs/sweep/ablation.yaml`, MiniLM) "
        f"takes at most 5 minutes on a 2-core CPU; longer sequences cost proportionally more (the CLI prints its "
        f"estimate before it starts; `dry_run=true` prints only that). Per model: one forward on the train and one "
        f"on the dev subset; {min(per_model['forward_landscape'])}–{max(per_model['forward_landscape'])} forwards "
        f"(the most for the runs with a contour) and {len(opts.rhos_worst) * opts.worst_steps} forward+backward "
        f"passes on the landscape subset; {max(per_model['hvp'])} Hessian-vector products on the Hessian subset "
        f"(at most: Lanczos stops at convergence), for {hess_runs}. {changed} Passes "
        f"counted (mean per model): {mean('forward'):.1f} forward, {mean('backward'):.1f} backward, "
        f"{mean('hvp'):.1f} HVP; every run's counts are in `sharpness.csv`, the measured wall times in "
        f"`sharpness_timing.csv`.",
    ]
    if result["skipped"]:
        left = ", ".join(f"`{rid}` ({why})" for rid, why in result["skipped"])
        lines.append(f"- **Not measured**: {left}.")
    return lines + [""]


def _summary_lines(summary, opts: SharpnessConfig) -> list[str]:
    if summary.empty:
        return []
    arms = arm_order(summary["arm"])
    labels = dict(measure_columns(opts) + LOSS_COLUMNS)
    rows = []
    for metric in dict.fromkeys(summary["metric"]):
        sub = summary[summary["metric"] == metric]
        for k in sorted(set(int(k) for k in sub["k"])):
            cells = []
            for arm in arms:
                hit = sub[(sub["arm"] == arm) & (sub["k"] == k)]
                if hit.empty:
                    cells.append("–")
                    continue
                r = hit.iloc[0]
                cells.append(_cell(r["mean"], r["ci_half"], int(r["n"]), int(r.get("left_out", 0) or 0)))
            rows.append([labels.get(metric, metric), k, *cells])
    return [
        "### Per arm: mean ± 95% CI over seeds",
        "",
        "Mean over seeds ± the half width of the 95% Student-t interval (n = runs; no interval for n < 2). "
        f"{MARK}: runs whose λmax did not converge or whose tr(H) is too noisy (see Setup), left out of the mean.",
        "",
    ] + [md_table(["measure", "k", *arms], rows), ""]


def _paired_lines(paired, opts: SharpnessConfig) -> list[str]:
    lines = ["### Paired differences (same seed and k)", ""]
    if paired.empty:
        return lines + ["No seed has both arms of a comparison (sam_full − adamw, sam_full − sam_last).", ""]
    labels = dict(measure_columns(opts) + LOSS_COLUMNS)
    rows = []
    for _, r in paired.iterrows():
        ci = "–" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
        rows.append(
            [
                labels.get(r["metric"], r["metric"]),
                int(r["k"]),
                f"{r['a']} − {r['b']}",
                f"{int(r['n'])} ({int(r['left_out'])} {MARK} left out)" if r.get("left_out", 0) else int(r["n"]),
                _g(r["mean_diff"]),
                ci,
                fmt_p(r["p_value"]),
                r["verdict"],
            ]
        )
    lines += [
        "Differences a − b within each seed (same data order and initialisation), mean over seeds with one test "
        "per row, the paired t-test, and its own 95% t-interval (analysis.stats.paired_differences: the interval "
        "excludes 0 exactly when p < 0.05). A sharpness measure reads flatter/sharper (no better/worse: whether "
        "flatter generalises better is what the τ table asks), a gap smaller/larger. Where the sweep has k = 1, "
        "sam_full and sam_last run the same algorithm there, so their difference must be 0. A seed whose λmax did "
        f"not converge or whose tr(H) is too noisy in either arm is left out of its pair ({MARK} in the pairs column).",
        "",
    ]
    return lines + [
        md_table(["measure", "k", "difference", "pairs", "mean", "95% t-interval", "p", "verdict"], rows),
        "",
    ]


def _tau_lines(taus, n_runs: int) -> list[str]:
    lines = [
        "### Sharpness against the generalisation gap (Kendall τ)",
        "",
        f"Kendall τ (tau-b, which accounts for ties) between each measure and the gap across all {n_runs} "
        f"measured runs (every arm and k together), with a percentile bootstrap 95% CI ({TAU_N_BOOT} resamples "
        f"of the runs, seed {TAU_BOOT_SEED}; none below {TAU_MIN_N} runs, too few distinct resamples). "
        "Caveat: sharpness is not reparametrisation-invariant (Dinh et al. 2017): rescaling the weights of a "
        "network changes λmax, the trace and the curves without "
        "changing the function it computes; the adaptive measures undo only elementwise rescaling. And in "
        "fine-tuning, sharpness often tracks the learning rate and the optimiser more than generalisation "
        "(Andriushchenko et al. 2023), so a τ here describes these runs, it is not evidence that flatter "
        f"minima generalise better. A τ is called uninformative when there are fewer than {TAU_MIN_N} runs, "
        "when its CI spans 0, or when over a quarter of the pairs are tied. Runs whose λmax did not converge "
        f"or whose tr(H) is too noisy are left out of that measure's τ ({MARK} in the runs column).",
        "",
    ]
    if taus.empty:
        return lines + ["No measure to correlate.", ""]
    rows = []
    for _, r in taus.iterrows():
        ci = "–" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        rows.append(
            [
                r["label"],
                r["gap_label"],
                f"{r['n']} ({int(r['left_out'])} {MARK} left out)" if r.get("left_out", 0) else r["n"],
                _g(r["tau"], ".3f"),
                ci,
                f"{r['ties_x']} / {r['ties_y']} of {r['pairs']}",
                r["verdict"],
            ]
        )
    lines.append(
        md_table(
            ["measure", "gap", "runs", "Kendall τ", "95% bootstrap CI", "tied pairs (measure / gap)", "reading"], rows
        )
    )
    informative = taus[taus["verdict"] == "CI excludes 0"]
    if n_runs < TAU_MIN_N:
        verdict = (
            f"With {n_runs} runs (fewer than {TAU_MIN_N}) every τ here is uninformative, whatever its "
            "interval: so few runs, several of them sharing an arm, cannot rank a measure against the gap."
        )
    elif informative.empty:
        verdict = (
            f"None of the {len(taus)} τ values is informative: each interval spans 0 or ties dominate "
            "(see the last column)."
        )
    else:
        named = ", ".join(f"{r['label']} vs {r['gap_label']} (τ = {r['tau']:.2f})" for _, r in informative.iterrows())
        verdict = (
            f"{len(informative)} of {len(taus)} τ values have a CI that excludes 0: {named}; the others are "
            "uninformative. Read them with the caveat above."
        )
    return lines + ["", verdict, ""]


FIGURE_TEXT = {
    "hessian": (
        "λmax and tr(H)",
        "Per k and arm: mean over seeds with a min–max bar; dots are single runs. Hollow circles (†): λmax not "
        "converged or tr(H) too noisy, left out of the mean and bar.",
    ),
    "adaptive": (
        "Adaptive sharpness against ρ",
        "Average-case (elementwise Gaussian) and worst-case (adaptive "
        "ball, gradient ascent) loss increase on the landscape subset; mean and min–max over seeds. Arms whose runs "
        "gave the same numbers (at k = 1 sam_last and sam_last_only are sam_full's algorithm) are one line, its "
        "label names them all.",
    ),
    "curves_1d": (
        "1D loss curves",
        "Landscape-subset (train) loss along filter-normalised directions (the same "
        "seeds for every model): thin lines are runs (mean over directions), thick lines the mean per k.",
    ),
    "surface_2d": (
        "2D loss contours",
        "One run per arm, all at the sweep's largest k (the first seed; an arm without a run at that k has no "
        "contour, the title names it); shared colour levels.",
    ),
    "interpolation": (
        "Interpolation between arms",
        "Loss on the straight line between two checkpoints of the same "
        "seed and k; solid: landscape (train) subset, dashed: as many dev features. Two identical runs (k = 1: "
        "sam_full and sam_last) give a flat line, and the panel says so.",
    ),
}


def build_markdown(result: dict, frame, summary, paired, taus, figures: dict[str, Path]) -> str:
    opts = result["opts"]
    lines = [
        "## Loss-landscape sharpness",
        "",
        f"Sharpness of the {len(frame)} completed runs of sweep `{opts.sweep}`, measured by "
        "`python -m analysis.sharpness` from the checkpoints (the numbers are in `sharpness.csv`, the curves in "
        "`sharpness_curves.csv`).",
        "",
    ]
    lines += _setup_lines(result, frame)
    lines += _summary_lines(summary, opts)
    lines += _paired_lines(paired, opts)
    lines += _tau_lines(taus, len(frame))
    if figures:
        lines += ["### Figures", ""]
        for name in FIGURES:
            if name in figures:
                title, text = FIGURE_TEXT[name]
                lines += [f"**{title}.** {text}", "", f"![{title}](figures/{FIGURES[name]})", ""]
    return "\n".join(lines).rstrip() + "\n"
