"""Loss-landscape sharpness of trained checkpoints.

The measurement primitives are model-agnostic and torch-only; they live in :mod:`analysis.landscape` and are
re-exported here, so ``from analysis.sharpness import hessian_top_eigenvalue`` works. Each takes a ``loss_fn()``
closure (no arguments, scalar fp32 loss over fixed data, model in eval mode, eager attention for Hessian products) and
the parameters (``dict(model.named_parameters())``), restores the weights bitwise and counts its passes in an optional
:class:`PassCounter`.

| quantity | function | definition |
|---|---|---|
| lambda_max | ``hessian_top_eigenvalue`` | power iteration on H v, Rayleigh quotient |
| tr(H) | ``hutchinson_trace`` | mean of v^T H v over Rademacher v, with its standard error |
| average adaptive sharpness | ``average_adaptive_sharpness`` | E[L(w + rho s z/||z||) - L(w)], s = abs(w) |
| worst-case adaptive sharpness | ``worst_case_adaptive_sharpness`` | max over ||delta/s|| <= rho, projected ascent |
| 1D / 2D landscape | ``loss_curve_1d``, ``loss_surface_2d`` | along filter-normalised random directions |
| interpolation | ``interpolate`` | L((1 - a) theta_a + a theta_b) |
"""

from analysis.landscape import (
    DEFAULT_EXCLUDE,
    AverageSharpness,
    EigenResult,
    PassCounter,
    TraceEstimate,
    WorstCaseSharpness,
    average_adaptive_sharpness,
    filter_normalized_direction,
    hessian_top_eigen,
    hessian_top_eigenvalue,
    hessian_vector_product,
    hutchinson_trace,
    interpolate,
    loss_curve_1d,
    loss_surface_2d,
    preserve_params,
    worst_case_adaptive_sharpness,
)

__all__ = [
    "DEFAULT_EXCLUDE",
    "AverageSharpness",
    "EigenResult",
    "PassCounter",
    "TraceEstimate",
    "WorstCaseSharpness",
    "average_adaptive_sharpness",
    "filter_normalized_direction",
    "hessian_top_eigen",
    "hessian_top_eigenvalue",
    "hessian_vector_product",
    "hutchinson_trace",
    "interpolate",
    "loss_curve_1d",
    "loss_surface_2d",
    "preserve_params",
    "worst_case_adaptive_sharpness",
]

# The checkpoint CLI (`python -m analysis.sharpness results_dir=... sweep=...`, see the Makefile) goes below.
#
#     python -m analysis.sharpness results_dir=DIR sweep=NAME [key=value ...]      (`help` lists the keys)
#
# measures every completed run of DIR/runs/NAME/ on one fixed, seeded data subset (analysis.sharpness.qa: data,
# checkpoints, the measurements of one model) and writes into `out` (default analysis.collect.report_dir:
# DIR/report/ for the default sweep, DIR/report-NAME/ for any other):
#
#     sharpness.csv           one row per run: run_id, arm, k, seed, every measure, pass counts
#     sharpness_curves.csv    the 1D curves, 2D surfaces and interpolation curves behind the figures (long format)
#     sharpness_timing.csv    wall time and passes per model and per interpolation pair (the only clock-dependent file)
#     figures/sharpness_*.png λmax / trace per arm × k, adaptive sharpness against ρ, 1D curves, 2D contours,
#                             interpolation curves
#     sharpness.md            the report's section (analysis.report includes it)
#
# It never writes into a run directory. Bad arguments and a sweep without completed runs are one-line errors, exit 2.

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

USAGE = "usage: python -m analysis.sharpness results_dir=DIR sweep=NAME [key=value ...]  (`help` lists the keys)"
TARGET_S = 300.0  # the default sweep's sharpness section is budgeted to 5 minutes on the 2-core CPU
N_BOOT = 2000  # bootstrap resamples for Kendall's tau
BOOT_SEED = 0
TAU_MIN_N = 10  # with fewer runs a Kendall tau is called uninformative whatever its interval
FIGURES = {
    "hessian": "sharpness_hessian.png",
    "adaptive": "sharpness_adaptive.png",
    "curves_1d": "sharpness_curves_1d.png",
    "surface_2d": "sharpness_surface_2d.png",
    "interpolation": "sharpness_interpolation.png",
}
INTERP_PAIRS = (("adamw", "sam_full"), ("sam_full", "sam_last"))  # endpoints of the interpolation curves
DIFFERENCES = (("sam_full", "adamw"), ("sam_full", "sam_last"))  # paired differences a − b on the same seed and k
NULLABLE = ("hessian_seeds", "worst_step_size", "threads", "max_runs")


@dataclasses.dataclass
class SharpnessConfig:
    """The CLI keys and their defaults. Sizes count features (tokenised windows) of the sweep's data.

    The defaults are the budget of the default sweep (configs/sweep/ablation.yaml: 16-24 MiniLM runs at sequence
    length 64-96) within 5 minutes on a 2-core CPU; sharpness.md states it.
    """

    results_dir: str = "results"
    sweep: str = "ablation"
    out: str | None = None  # where the csv, sharpness.md and figures go (null: collect.report_dir, as analysis.report)
    train_examples: int = 32  # seeded train subset: the train loss (one forward per model)
    dev_examples: int = 32  # seeded dev subset: the dev loss (one forward per model)
    landscape_examples: int = 8  # the first N of each subset: adaptive sharpness, 1D/2D curves, interpolation
    hessian_examples: int = 4  # the first N of the train subset: lambda_max and trace (double backward)
    batch_size: int = 32  # features per forward chunk
    eigen_iters: int = 5  # power-iteration HVPs for lambda_max (0: skip); as many again if the shifted rerun is needed
    eigen_tol: float = 1e-3  # relative change of the Rayleigh quotient that ends power iteration early
    trace_samples: int = 3  # Rademacher probes of Hutchinson's trace (0: skip)
    hessian_seeds: int | None = None  # Hessian measures only on runs of the first N seeds (null: every run)
    rhos_worst: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.05, 0.1])  # ||delta/|w|||_2 <= rho
    rhos_average: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.05, 0.1])  # sigma_j = rho |w_j|
    average_samples: int = 2  # antithetic Gaussian draws per rho (0: skip)
    worst_steps: int = 1  # projected gradient-ascent steps per rho (1: the SAM/ASAM step, then the ball's surface)
    worst_step_size: float | None = None  # ascent step in units of rho; null: 2 / worst_steps
    curve_points: int = 7  # points per 1D curve, alpha in [-curve_span, curve_span]
    curve_directions: int = 3  # filter-normalised directions, seeds seed, seed+1, ... (the same for every model)
    curve_span: float = 1.0
    surface_points: int = 7  # 2D contour on an N x N grid (0: none), one per arm: the first seed's run at the largest k
    surface_span: float = 1.0
    interp_points: int = 7  # alphas in [0, 1] per interpolation curve (0: none)
    seed: int = 0
    threads: int | None = None  # torch CPU threads (null: torch's default)
    max_runs: int | None = None  # measure only the first N completed runs in (arm, k, seed) order
    dry_run: bool = False  # print the plan and the estimated time, then stop (nothing is written)


# lowest allowed value of each integer key
_MINIMUM = {
    "train_examples": 1,
    "dev_examples": 1,
    "landscape_examples": 1,
    "hessian_examples": 1,
    "batch_size": 1,
    "eigen_iters": 0,
    "trace_samples": 0,
    "hessian_seeds": 1,
    "average_samples": 0,
    "worst_steps": 0,
    "curve_points": 1,
    "curve_directions": 0,
    "surface_points": 0,
    "interp_points": 0,
    "threads": 1,
    "max_runs": 1,
}


def _error(message: str) -> Exception:
    from analysis.sharpness.qa import SharpnessError

    return SharpnessError(message)


def _defaults() -> dict[str, Any]:
    return dataclasses.asdict(SharpnessConfig())


def parse_args(argv: Sequence[str]) -> SharpnessConfig:
    """key=value arguments → a validated SharpnessConfig. Values are typed by the key's type, as the training CLI
    does (experiments.config.parse_value): text keys (results_dir, sweep, out) as typed, numbers by Python's rules
    (max_runs=010 is 10, not YAML 1.1's octal 8), lists as YAML flow lists ([0.01, 0.1]), null (or nothing) is None.
    Raises SharpnessError (one line) for a malformed argument, an unknown key or a value out of range."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from experiments.config import ConfigError, is_text_type, parse_value, schema_type

    known = list(_defaults())
    cfg = OmegaConf.structured(SharpnessConfig)
    OmegaConf.set_struct(cfg, True)
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise _error(f"argument {arg!r} must look like key=value; {USAGE}")
        key, raw = arg.split("=", 1)
        key = key.strip()
        if key not in known:
            raise _error(f"unknown key {key!r}; known keys: {', '.join(known)}")
        try:
            hint = schema_type(key, SharpnessConfig)
            value = parse_value(raw, hint) if raw.strip() or is_text_type(hint) else None
            OmegaConf.update(cfg, key, value, merge=False)  # converts the text by the field's type
        except (OmegaConfBaseException, ValueError, ConfigError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise _error(f"{key}={raw!r}: {first}") from None
    opts = OmegaConf.to_object(cfg)
    for key in ("results_dir", "sweep"):
        if not getattr(opts, key):
            raise _error(f"{key} needs a value ({key}=...)")
    for key, low in _MINIMUM.items():
        value = getattr(opts, key)
        if value is None and key in NULLABLE:
            continue
        if value is None or value < low:
            raise _error(
                f"{key}={value!r} is out of range; it must be >= {low}" + (" or null" if key in NULLABLE else "")
            )
    for key in ("rhos_worst", "rhos_average"):
        rhos = list(getattr(opts, key))
        if not rhos or any(not math.isfinite(r) or r <= 0 for r in rhos) or len(set(rhos)) != len(rhos):
            raise _error(f"{key}={rhos!r} must be a non-empty list of distinct radii > 0")
        setattr(opts, key, sorted(float(r) for r in rhos))
    for key in ("eigen_tol", "curve_span", "surface_span"):
        if not getattr(opts, key) > 0:
            raise _error(f"{key}={getattr(opts, key)!r} is out of range; it must be > 0")
    if opts.worst_step_size is not None and not opts.worst_step_size > 0:
        raise _error(f"worst_step_size={opts.worst_step_size!r} is out of range; it must be > 0 or null")
    if opts.landscape_examples > min(opts.train_examples, opts.dev_examples):
        raise _error(
            f"landscape_examples={opts.landscape_examples} must be <= train_examples={opts.train_examples} "
            f"and dev_examples={opts.dev_examples} (the landscape subsets are their first features)"
        )
    if opts.hessian_examples > opts.train_examples:
        raise _error(
            f"hessian_examples={opts.hessian_examples} must be <= train_examples={opts.train_examples} "
            f"(the Hessian subset is the first features of the train subset)"
        )
    return opts


def help_text() -> str:
    lines = [USAGE, "", "keys and defaults (sizes count features):"]
    for key, value in _defaults().items():
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        lines.append(f"  {key}={shown}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# the runs of a sweep and what each one gets


@dataclasses.dataclass
class RunInfo:
    run_id: str
    path: Path
    arm: str
    k: int
    seed: int
    cfg: Any  # the run's validated config
    summary: dict


def find_runs(results_dir: str, sweep: str) -> tuple[list[RunInfo], list[tuple[str, str]]]:
    """(completed runs that have checkpoint/final, in arm, k, seed order; [(run_id, why it is left out)])."""
    from analysis.collect import CollectError, arm_order, read_json, run_dirs
    from analysis.sharpness.qa import load_run_config

    try:
        dirs = run_dirs(results_dir, sweep)
    except CollectError as err:
        raise _error(str(err)) from None
    runs, skipped = [], []
    for path in dirs:
        summary = read_json(path / "summary.json")
        summary = summary if isinstance(summary, dict) else {}
        status = summary.get("status") or "no summary.json"
        if status != "completed":
            skipped.append((path.name, f"status {status}"))
        elif not (path / "checkpoint" / "final").is_dir():
            skipped.append((path.name, "no checkpoint/final (train.save_model=false?)"))
        else:
            cfg = load_run_config(path)
            runs.append(
                RunInfo(path.name, path, str(cfg.arm), int(cfg.train.accumulation_steps), int(cfg.seed), cfg, summary)
            )
    order = {arm: i for i, arm in enumerate(arm_order(r.arm for r in runs))}
    runs.sort(key=lambda r: (order[r.arm], r.k, r.seed, r.run_id))
    return runs, skipped


@dataclasses.dataclass
class Plan:
    hessian: set  # run ids that get lambda_max and the trace
    surface: dict  # arm -> run id of its 2D contour
    pairs: list  # [(RunInfo a, RunInfo b)] interpolation endpoints, same k and seed


def plan_runs(runs: Sequence[RunInfo], opts: SharpnessConfig) -> Plan:
    seeds = sorted({r.seed for r in runs})
    chosen = set(seeds if opts.hessian_seeds is None else seeds[: opts.hessian_seeds])
    hessian = set()
    if opts.eigen_iters > 0 or opts.trace_samples > 0:
        hessian = {r.run_id for r in runs if r.seed in chosen}
    surface = {}
    if opts.surface_points > 0:
        for arm in dict.fromkeys(r.arm for r in runs):
            mine = [r for r in runs if r.arm == arm]
            k_max = max(r.k for r in mine)
            surface[arm] = min((r for r in mine if r.k == k_max), key=lambda r: (r.seed, r.run_id)).run_id
    pairs = []
    if opts.interp_points > 0:
        cell = {}
        for r in runs:
            cell.setdefault((r.arm, r.k, r.seed), r)  # a rerun of the same cell: the first one stands for it
        for a, b in INTERP_PAIRS:
            for (arm, k, seed), run in cell.items():
                if arm == a and (b, k, seed) in cell:
                    pairs.append((run, cell[(b, k, seed)]))
    return Plan(hessian, surface, pairs)


def planned_passes(opts: SharpnessConfig, *, hessian: bool, surface: bool) -> dict[str, int]:
    """What one model costs with these settings: one forward on the train and one on the dev subset, forwards and
    forward+backward pairs on the landscape subset, HVPs and Hessian graph set-ups on the Hessian subset (a shifted
    lambda_max rerun, needed only when the first estimate is negative, adds eigen_iters HVPs and one set-up)."""
    n_worst, n_avg = len(opts.rhos_worst), len(opts.rhos_average)
    forward = (1 + 2 * opts.average_samples * n_avg) if opts.average_samples else 0
    forward += 1 + n_worst  # L(w) and the last point of every ascent
    forward += opts.curve_directions * opts.curve_points + (opts.surface_points**2 if surface else 0)
    return {
        "forward_losses": 2,
        "forward_landscape": forward,
        "backward_landscape": n_worst * opts.worst_steps,
        "directions": opts.curve_directions + (max(0, 2 - opts.curve_directions) if surface else 0),
        "gaussian_draws": opts.average_samples + 1,
        "weight_saves": int(opts.average_samples > 0) + 1 + opts.curve_directions + int(surface),
        "hvp": (opts.eigen_iters + opts.trace_samples) if hessian else 0,
        "hessian_setups": (int(opts.eigen_iters > 0) + int(opts.trace_samples > 0)) if hessian else 0,
    }


def estimate_seconds(
    costs: dict[str, float], plans: Sequence[dict[str, int]], n_pairs: int, opts: SharpnessConfig, load_s: float
) -> float:
    """Projected wall time from the timing probe: passes at their measured cost, random draws (directions, Gaussian
    perturbations), one model load per run and two per interpolation pair. An HVP call is a graph set-up (about a
    forward+backward of the Hessian subset) plus one product; the products of one power iteration or one trace
    estimate share a set-up."""
    setup = costs["forward_backward"] * opts.hessian_examples / opts.landscape_examples
    per_hvp = max(costs["hvp_call"] - setup, 0.5 * costs["hvp_call"])
    total = 0.0
    for p in plans:
        total += costs["forward_train"] + costs["forward_dev"] + load_s
        total += p["forward_landscape"] * (costs["forward_landscape"] + costs["write"])
        total += p["backward_landscape"] * (costs["forward_backward"] + costs["write"])
        total += p["hvp"] * per_hvp + p["hessian_setups"] * setup
        total += p["directions"] * costs["direction"] + p["gaussian_draws"] * costs["gaussian"]
        total += 2 * p["weight_saves"] * costs["write"]  # each measurement saves the weights and restores them
    total += n_pairs * (
        opts.interp_points * (costs["forward_landscape"] + costs["forward_landscape_dev"] + 2 * costs["write"])
        + 2 * load_s
        + 8 * costs["write"]
    )
    return total


# ---------------------------------------------------------------------------------------------------------------------
# measuring


class _Progress:
    """A tqdm bar over models on a terminal, plain lines otherwise; the per-model lines go to stdout either way."""

    def __init__(self, total: int, label: str):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="model", dynamic_ncols=True, file=sys.stderr)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _num(x: Any) -> float:
    """A finite float, or NaN for anything else (None, strings, inf)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x) if math.isfinite(x) else math.nan


def _g(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _add(total, counter) -> None:
    total.forward += counter.forward
    total.backward += counter.backward
    total.hvp += counter.hvp


def measure_sweep(opts: SharpnessConfig) -> dict[str, Any]:
    """Find, plan, time and measure; returns everything the writers need. Prints the estimate, one line per model and
    per interpolation pair, and the total."""
    import torch

    from analysis.sharpness.qa import (
        PassCounter,
        Subsets,
        build_subsets,
        check_same_data,
        interpolation_pair,
        load_qa_model,
        measure_model,
        probe_costs,
    )

    t_start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    runs, skipped = find_runs(opts.results_dir, opts.sweep)
    where = Path(opts.results_dir) / "runs" / opts.sweep
    if not runs:
        why = "; ".join(f"{rid}: {reason}" for rid, reason in skipped[:3]) or "it holds no run directories"
        raise _error(f"no completed run with a checkpoint/final in {str(where)!r} ({why})")
    if opts.max_runs is not None and len(runs) > opts.max_runs:
        skipped += [(r.run_id, f"beyond max_runs={opts.max_runs}") for r in runs[opts.max_runs :]]
        runs = runs[: opts.max_runs]
    check_same_data({r.run_id: r.cfg for r in runs})
    data = build_subsets(
        runs[0].cfg,
        train=opts.train_examples,
        dev=opts.dev_examples,
        landscape=opts.landscape_examples,
        hessian=opts.hessian_examples,
        seed=opts.seed,
    )
    plan = plan_runs(runs, opts)
    surface_ids = set(plan.surface.values())
    plans = {
        r.run_id: planned_passes(opts, hessian=r.run_id in plan.hessian, surface=r.run_id in surface_ids) for r in runs
    }

    # time one forward / backward / HVP on the first model, and say how long the whole sweep will take
    model = load_qa_model(runs[0].path)  # the first load also pays one-off imports: time a second one
    t0 = time.perf_counter()
    model = load_qa_model(runs[0].path)
    load_s = time.perf_counter() - t0
    costs = probe_costs(model, data, opts)
    estimate = estimate_seconds(costs, list(plans.values()), len(plan.pairs), opts, load_s)
    print(
        f"sharpness of sweep {opts.sweep!r}: {len(runs)} runs ({len(skipped)} left out), "
        f"{torch.get_num_threads()} threads, subsets of {Subsets.size(data.train)} train / "
        f"{Subsets.size(data.dev)} dev / {Subsets.size(data.landscape)} landscape / {Subsets.size(data.hessian)} "
        f"Hessian features",
        flush=True,
    )
    print(
        f"timing probe: forward {costs['forward_train']:.3f}s (train subset), {costs['forward_dev']:.3f}s (dev), "
        f"{costs['forward_landscape']:.3f}s (landscape); forward+backward {costs['forward_backward']:.3f}s "
        f"(landscape); HVP call {costs['hvp_call']:.3f}s (Hessian subset); weight write {costs['write']:.3f}s, "
        f"random direction {costs['direction']:.3f}s, Gaussian draw {costs['gaussian']:.3f}s; model load "
        f"{load_s:.2f}s",
        flush=True,
    )
    over = (
        f" — over the {TARGET_S:.0f}s budget: lower hessian_seeds, eigen_iters, trace_samples, curve_points, "
        f"curve_directions or the subset sizes"
        if estimate > TARGET_S
        else ""
    )
    print(
        f"estimated time: {estimate:.0f}s for {len(runs)} models and {len(plan.pairs)} interpolation pairs{over}",
        flush=True,
    )
    if opts.dry_run:
        return {"opts": opts, "dry_run": True, "estimate": estimate, "costs": costs, "plans": plans}

    rows, curves, timing = [], {}, []
    totals = PassCounter()
    progress = _Progress(len(runs), "sharpness")
    try:
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            if model is None:
                model = load_qa_model(run.path)
            t_load = time.perf_counter() - t0
            counter = PassCounter()
            row, run_curves = measure_model(
                model,
                data,
                opts,
                hessian=run.run_id in plan.hessian,
                surface=run.run_id in surface_ids,
                counter=counter,
            )
            model = None
            wall = time.perf_counter() - t0
            final = run.summary.get("final") or {}
            dev_s, train_s = _num(final.get("dev/loss")), _num(final.get("train/loss"))
            gap = row.pop("gap")
            rows.append(
                {
                    "run_id": run.run_id,
                    "arm": run.arm,
                    "k": run.k,
                    "seed": run.seed,
                    **row,
                    "gap_subset": gap,
                    "summary_dev_loss": dev_s,
                    "summary_train_loss": train_s,
                    "gap_summary": dev_s - train_s,
                    "hessian_measured": run.run_id in plan.hessian,
                    "surface_measured": run.run_id in surface_ids,
                    **counter.as_dict(),
                }
            )
            curves[run.run_id] = run_curves
            timing.append(
                {
                    "what": run.run_id,
                    "load_s": round(t_load if i else load_s, 3),
                    "wall_s": round(wall, 3),
                    **counter.as_dict(),
                }
            )
            _add(totals, counter)
            progress.write(
                f"[{i + 1}/{len(runs)}] {run.run_id}: lambda_max {_g(row['lambda_max'])}, trace "
                f"{_g(row['trace'])} ± {_g(row['trace_se'], '.2g')}, gap {_g(gap)} | {counter} | "
                f"{wall:.1f}s"
            )
            progress.step()
    finally:
        progress.close()

    interp = []
    for a, b in plan.pairs:
        t0 = time.perf_counter()
        counter = PassCounter()
        out = interpolation_pair(load_qa_model(a.path), load_qa_model(b.path), data, opts, counter)
        wall = time.perf_counter() - t0
        interp.append({"a": a, "b": b, **out})
        timing.append(
            {
                "what": f"interpolation {a.run_id} -> {b.run_id}",
                "load_s": math.nan,
                "wall_s": round(wall, 3),
                **counter.as_dict(),
            }
        )
        _add(totals, counter)
        print(f"interpolation {a.arm} -> {b.arm} (k={a.k}, seed={a.seed}): {counter} | {wall:.1f}s", flush=True)
    return {
        "opts": opts,
        "runs": runs,
        "skipped": skipped,
        "rows": rows,
        "curves": curves,
        "interp": interp,
        "timing": timing,
        "data": data,
        "plan": plan,
        "plans": plans,
        "costs": costs,
        "estimate": estimate,
        "totals": totals,
        "measure_s": time.perf_counter() - t_start,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# statistics: per-arm summaries, paired differences, Kendall's tau


def measure_columns(opts: SharpnessConfig) -> list[tuple[str, str]]:
    """(column, label) of the sharpness measures, in table order."""
    from analysis.sharpness.qa import rho_key

    cols = [("lambda_max", "λmax"), ("trace", "tr(H)")]
    cols += [(f"avg_sharpness_rho{rho_key(r)}", f"average sharpness ρ={rho_key(r)}") for r in opts.rhos_average]
    cols += [(f"worst_sharpness_rho{rho_key(r)}", f"worst-case sharpness ρ={rho_key(r)}") for r in opts.rhos_worst]
    return cols


LOSS_COLUMNS = [
    ("train_loss", "train loss (subset)"),
    ("dev_loss", "dev loss (subset)"),
    ("gap_subset", "gap: dev − train loss (subsets)"),
    ("gap_summary", "gap: final dev/loss − train/loss (summary.json)"),
]
GAPS = [("gap_subset", "subset gap"), ("gap_summary", "summary gap")]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long samples: sum_{i<j} sgn(dx) sgn(dy) / sqrt(#pairs untied in x *
    #pairs untied in y); NaN when either sample is constant or has fewer than 2 values."""
    import numpy as np

    return float(_tau_b_rows(np.asarray(x, dtype=float)[None, :], np.asarray(y, dtype=float)[None, :])[0])


def _tau_b_rows(x, y):
    """tau-b of every row pair of two (B, n) arrays, in chunks of rows (B * n * n sign products in all)."""
    import numpy as np

    n = x.shape[1]
    out = np.full(x.shape[0], np.nan)
    if n < 2:
        return out
    step = max(1, 2_000_000 // (n * n))
    for begin in range(0, x.shape[0], step):
        xs, ys = x[begin : begin + step], y[begin : begin + step]
        sx = np.sign(xs[:, :, None] - xs[:, None, :])
        sy = np.sign(ys[:, :, None] - ys[:, None, :])
        num = (sx * sy).sum(axis=(1, 2))  # every pair twice: the factor cancels in the ratio
        den = np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[begin : begin + step] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def kendall_with_ci(
    x: Sequence[float], y: Sequence[float], n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = 0.95
) -> dict[str, Any]:
    """tau-b over the pairs where both values are finite, with a percentile bootstrap CI (runs resampled with
    replacement, numpy Generator seeded by `seed`; resamples with an undefined tau are dropped), the number of pairs
    and the tied pairs in x and in y."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    pairs = n * (n - 1) // 2
    ties_x = int(sum((x[i] == x[i + 1 :]).sum() for i in range(n)))
    ties_y = int(sum((y[i] == y[i + 1 :]).sum() for i in range(n)))
    tau = kendall_tau_b(x, y) if n >= 2 else math.nan
    low = high = math.nan
    if n >= 3 and not math.isnan(tau):
        rng = np.random.default_rng(seed)
        index = rng.integers(0, n, size=(int(n_boot), n))
        taus = _tau_b_rows(x[index], y[index])
        taus = taus[np.isfinite(taus)]
        if taus.size:
            tail = 100 * (1 - level) / 2
            low, high = (float(v) for v in np.percentile(taus, [tail, 100 - tail]))
    return {"n": n, "tau": tau, "ci_low": low, "ci_high": high, "pairs": pairs, "ties_x": ties_x, "ties_y": ties_y}


def tau_verdict(result: dict[str, Any]) -> str:
    """Whether a tau says anything: not below TAU_MIN_N runs, not when its CI spans 0, not when ties dominate."""
    n, tau, low, high = result["n"], result["tau"], result["ci_low"], result["ci_high"]
    if n < 2 or math.isnan(tau):
        return "undefined (a constant or missing measure)"
    notes = []
    if n < TAU_MIN_N:
        notes.append(f"n = {n} < {TAU_MIN_N}")
    if math.isnan(low) or (low <= 0 <= high):
        notes.append("CI spans 0")
    if result["pairs"] and max(result["ties_x"], result["ties_y"]) > result["pairs"] / 4:
        notes.append("over a quarter of the pairs tied")
    return ("uninformative (" + "; ".join(notes) + ")") if notes else "CI excludes 0"


def tau_table(frame, opts: SharpnessConfig):
    import pandas as pd

    rows = []
    for column, label in measure_columns(opts):
        for gap, gap_label in GAPS:
            if column not in frame or gap not in frame:
                continue
            result = kendall_with_ci(frame[column], frame[gap])
            rows.append(
                {
                    "measure": column,
                    "label": label,
                    "gap": gap,
                    "gap_label": gap_label,
                    **result,
                    "verdict": tau_verdict(result),
                }
            )
    return pd.DataFrame(rows)


def summary_tables(frame, opts: SharpnessConfig):
    """(per arm × k mean and t CI of every measure, paired differences sam_full − adamw and sam_full − sam_last)."""
    import pandas as pd

    from analysis.stats import paired_differences, summarize

    columns = measure_columns(opts) + LOSS_COLUMNS
    summary = pd.concat(
        [summarize(frame, c, by=("arm", "k")) for c, _ in columns if frame[c].notna().any()], ignore_index=True
    )
    paired = []
    arms = set(frame["arm"])
    for a, b in DIFFERENCES:
        if a in arms and b in arms:
            for c, _ in measure_columns(opts) + LOSS_COLUMNS[2:3]:
                if frame[c].notna().any():
                    paired.append(paired_differences(frame, c, a, b, by=("k",)))
    paired = pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()
    return summary, paired


# ---------------------------------------------------------------------------------------------------------------------
# figures (matplotlib Figure + Agg, never pyplot; colours per arm as in analysis.plots)

_K_STYLES = ("-", "--", ":", "-.")


def _k_style(ks: Sequence[int], k: int):
    return _K_STYLES[list(ks).index(k) % len(_K_STYLES)]


def figure_hessian(frame):
    """λmax and tr(H) per k (x) and arm: mean with a min–max bar over seeds, single runs as dots."""
    import numpy as np

    from analysis.plots import arm_color, arm_label, legend_below, new_figure, seed_range

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
    for ax, (column, label) in zip(axes[0], panels):
        for arm in arms:
            xs, means, err_low, err_high = [], [], [], []
            for i, k in enumerate(ks):
                values = frame[(frame["arm"] == arm) & (frame["k"] == k)][column].dropna().to_numpy(dtype=float)
                if values.size == 0:
                    continue
                mean, low, high = seed_range(values)
                x = i + offsets[arm]
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
        ax.set_title(label)
    fig.suptitle("Hessian sharpness on the Hessian subset — mean and min–max over seeds (dots: runs)")
    legend_below(fig, axes)
    return fig


def figure_adaptive(frame, opts: SharpnessConfig):
    """Average- and worst-case adaptive sharpness against ρ: per arm and k the mean over seeds with min–max bars."""
    from analysis.plots import arm_color, arm_label, legend_below, new_figure, seed_range
    from analysis.sharpness.qa import rho_key

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
    import numpy as np

    from analysis.plots import arm_color, arm_label, new_figure
    from analysis.sharpness.qa import alphas

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
    import numpy as np

    from analysis.plots import arm_label, new_figure
    from analysis.sharpness.qa import alphas

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
    import matplotlib

    from analysis.plots import arm_label, legend_below, new_figure

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
    import matplotlib

    from analysis.plots import STYLE, save

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


# ---------------------------------------------------------------------------------------------------------------------
# the markdown section and the files


def _cell(mean: float, half: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    if n < 2 or math.isnan(half):
        return f"{mean:.4g} (n={n})"
    return f"{mean:.4g} ± {half:.2g} (n={n})"


def _setup_lines(result: dict, frame) -> list[str]:
    from analysis.sharpness.qa import Subsets, rho_key

    opts, data, plan, runs = result["opts"], result["data"], result["plan"], result["runs"]
    rhos_a = ", ".join(rho_key(r) for r in opts.rhos_average)
    rhos_w = ", ".join(rho_key(r) for r in opts.rhos_worst)
    step = (
        opts.worst_step_size
        if opts.worst_step_size is not None
        else (2.0 / opts.worst_steps if opts.worst_steps else 0.0)
    )
    hess = frame[frame["hessian_measured"]]
    n_conv = int(hess["lambda_max_converged"].fillna(False).astype(bool).sum()) if len(hess) else 0
    n_shift = int(hess["lambda_max_shifted"].fillna(False).astype(bool).sum()) if len(hess) else 0
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
        if k not in ("results_dir", "sweep", "out", "threads", "dry_run") and v != defaults[k]
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
        f"- **λmax**: power iteration on Hessian-vector products (double backward), at most {opts.eigen_iters} "
        f"products, stopping early when the Rayleigh quotient changes by less than {opts.eigen_tol:g} (relative); "
        f"when the first estimate is negative (a larger negative eigenvalue dominates), it is rerun on H − shift·I "
        f"with shift = that estimate, which converges to λmax. Converged within the budget: {n_conv} of "
        f"{len(hess)} runs; shifted rerun needed: {n_shift}.",
        f"- **tr(H)**: Hutchinson's estimator with {opts.trace_samples} Rademacher probes (± = its standard error).",
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
        f"[−{opts.surface_span:g}, {opts.surface_span:g}]², one per arm (the first seed's run at the largest k): "
        f"{surfaces}.",
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
        f"({opts.eigen_iters} more where the shifted λmax rerun is needed), for {hess_runs}. {changed} Passes "
        f"counted (mean per model): {mean('forward'):.1f} forward, {mean('backward'):.1f} backward, "
        f"{mean('hvp'):.1f} HVP; every run's counts are in `sharpness.csv`, the measured wall times in "
        f"`sharpness_timing.csv`.",
    ]
    if result["skipped"]:
        left = ", ".join(f"`{rid}` ({why})" for rid, why in result["skipped"])
        lines.append(f"- **Not measured**: {left}.")
    return lines + [""]


def _summary_lines(summary, opts: SharpnessConfig) -> list[str]:
    from analysis.collect import arm_order
    from analysis.report import md_table

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
                cells.append(
                    "–" if hit.empty else _cell(hit.iloc[0]["mean"], hit.iloc[0]["ci_half"], int(hit.iloc[0]["n"]))
                )
            rows.append([labels.get(metric, metric), k, *cells])
    return [
        "### Per arm: mean ± 95% CI over seeds",
        "",
        "Mean over seeds ± the half width of the 95% Student-t interval (n = runs; no interval for n < 2).",
        "",
    ] + [md_table(["measure", "k", *arms], rows), ""]


def _paired_lines(paired, opts: SharpnessConfig) -> list[str]:
    from analysis.report import md_table

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
                int(r["n"]),
                _g(r["mean_diff"]),
                ci,
                r["verdict"],
            ]
        )
    lines += [
        "Differences a − b within each seed (same data order and initialisation), mean over seeds with a "
        "bootstrap 95% percentile CI (analysis.stats.paired_differences). Where the sweep has k = 1, sam_full "
        "and sam_last run the same algorithm there, so their difference must be 0.",
        "",
    ]
    return lines + [md_table(["measure", "k", "difference", "pairs", "mean", "95% bootstrap CI", "verdict"], rows), ""]


def _tau_lines(taus, n_runs: int) -> list[str]:
    from analysis.report import md_table

    lines = [
        "### Sharpness against the generalisation gap (Kendall τ)",
        "",
        f"Kendall τ (tau-b, which accounts for ties) between each measure and the gap across all {n_runs} measured "
        f"runs (every arm and k together), with a percentile bootstrap 95% CI ({N_BOOT} resamples of the runs, "
        f"seed {BOOT_SEED}). Caveat: sharpness is not reparametrisation-invariant (Dinh et al. 2017): rescaling the "
        "weights of a network changes λmax, the trace and the curves without changing the function it computes; the "
        "adaptive measures undo only elementwise rescaling. And in fine-tuning, sharpness often tracks the learning "
        "rate and the optimiser more than generalisation (Andriushchenko et al. 2023), so a τ here describes these "
        "runs, it is not evidence that flatter minima generalise better. A τ is called uninformative when there "
        f"are fewer than {TAU_MIN_N} runs, when its CI spans 0, or when over a quarter of the pairs are tied.",
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
                r["n"],
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
    "hessian": ("λmax and tr(H)", "Per k and arm: mean over seeds with a min–max bar; dots are single runs."),
    "adaptive": (
        "Adaptive sharpness against ρ",
        "Average-case (elementwise Gaussian) and worst-case (adaptive "
        "ball, gradient ascent) loss increase on the landscape subset; mean and min–max over seeds.",
    ),
    "curves_1d": (
        "1D loss curves",
        "Landscape-subset (train) loss along filter-normalised directions (the same "
        "seeds for every model): thin lines are runs (mean over directions), thick lines the mean per k.",
    ),
    "surface_2d": ("2D loss contours", "One run per arm (the first seed at the largest k); shared colour levels."),
    "interpolation": (
        "Interpolation between arms",
        "Loss on the straight line between two checkpoints of the same "
        "seed and k; solid: landscape (train) subset, dashed: as many dev features.",
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


CSV_FIRST = [
    "run_id",
    "arm",
    "k",
    "seed",
    "train_loss",
    "dev_loss",
    "gap_subset",
    "summary_dev_loss",
    "summary_train_loss",
    "gap_summary",
    "lambda_max",
    "lambda_max_first",
    "lambda_max_iters",
    "lambda_max_converged",
    "lambda_max_shifted",
    "trace",
    "trace_se",
]
CSV_LAST = ["hessian_measured", "surface_measured", "forward", "backward", "hvp"]


def results_frame(rows: list[dict]):
    import pandas as pd

    frame = pd.DataFrame(rows)
    middle = [c for c in frame.columns if c not in CSV_FIRST + CSV_LAST]
    return frame[CSV_FIRST + middle + CSV_LAST]


def curves_frame(result: dict):
    """Long format: kind (curve_1d | surface_2d | interp_train | interp_dev), run_id (a -> b for interpolation),
    direction, alpha, beta, loss."""
    import pandas as pd

    from analysis.sharpness.qa import alphas

    opts = result["opts"]
    line = alphas(opts.curve_points, opts.curve_span)
    grid = alphas(opts.surface_points, opts.surface_span) if opts.surface_points else []
    rows = []
    for run in result["runs"]:
        c = result["curves"][run.run_id]
        base = {"run_id": run.run_id, "arm": run.arm, "k": run.k, "seed": run.seed}
        for d, values in enumerate(c["curve_1d"]):
            rows += [
                {**base, "kind": "curve_1d", "direction": d, "alpha": a, "beta": math.nan, "loss": v}
                for a, v in zip(line, values)
            ]
        if c["surface"] is not None:
            rows += [
                {**base, "kind": "surface_2d", "direction": math.nan, "alpha": a, "beta": b, "loss": v}
                for a, zrow in zip(grid, c["surface"])
                for b, v in zip(grid, zrow)
            ]
    for p in result["interp"]:
        base = {
            "run_id": f"{p['a'].run_id} -> {p['b'].run_id}",
            "arm": f"{p['a'].arm} -> {p['b'].arm}",
            "k": p["a"].k,
            "seed": p["a"].seed,
        }
        for split in ("train", "dev"):
            rows += [
                {**base, "kind": f"interp_{split}", "direction": math.nan, "alpha": a, "beta": math.nan, "loss": v}
                for a, v in zip(p["alpha"], p[split])
            ]
    return pd.DataFrame(rows, columns=["run_id", "arm", "k", "seed", "kind", "direction", "alpha", "beta", "loss"])


def write_outputs(result: dict, out_dir: Path) -> dict[str, Path]:
    """Tables, figures and sharpness.md under out_dir (analysis.collect.report_dir unless `out` is given);
    returns {name: path}."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    frame = results_frame(result["rows"])
    summary, paired = summary_tables(frame, result["opts"])
    taus = tau_table(frame, result["opts"])
    figures = draw_figures(result, frame, out_dir / "figures")
    written = {
        "csv": out_dir / "sharpness.csv",
        "curves": out_dir / "sharpness_curves.csv",
        "timing": out_dir / "sharpness_timing.csv",
        "md": out_dir / "sharpness.md",
    }
    frame.to_csv(written["csv"], index=False, lineterminator="\n")
    curves_frame(result).to_csv(written["curves"], index=False, lineterminator="\n")
    pd.DataFrame(result["timing"]).to_csv(written["timing"], index=False, lineterminator="\n")
    written["md"].write_text(build_markdown(result, frame, summary, paired, taus, figures), encoding="utf-8")
    written.update({f"figure:{name}": path for name, path in figures.items()})
    return written


def main(argv: Sequence[str] | None = None) -> int:
    import logging
    import os

    from analysis.sharpness.qa import SharpnessError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text())
        return 0
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")  # checkpoints and data are local: a hub look-up would only hang
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts = parse_args(argv)
        result = measure_sweep(opts)
        if result.get("dry_run"):
            return 0
        t0 = time.perf_counter()
        from analysis.collect import report_dir

        out_dir = Path(opts.out) if opts.out else report_dir(opts.results_dir, opts.sweep)
        written = write_outputs(result, out_dir)
    except SharpnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    totals, n = result["totals"], len(result["rows"])
    total_s = result["measure_s"] + time.perf_counter() - t0
    print(
        f"total: {n} models + {len(result['interp'])} interpolation pairs, {totals}, "
        f"{total_s:.0f}s wall ({total_s / max(1, n):.1f}s per model; estimated {result['estimate']:.0f}s)"
    )
    for name in ("csv", "md"):
        print(f"wrote {written[name]}")
    print(f"wrote {sum(1 for k in written if k.startswith('figure:'))} figures to {out_dir / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
