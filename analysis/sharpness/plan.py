"""The runs of a sweep and what each one gets: which are measured, which get the Hessian measures and a 2D
contour, which pairs are interpolated, and the cost model behind the printed time estimate."""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.collect import CollectError, arm_order, run_dirs
from analysis.sharpness.options import SharpnessConfig, SharpnessError
from analysis.sharpness.qa import load_run_config
from experiments.arms import INTERPOLATION_PAIRS
from experiments.rundir import COMPLETED, checkpoint_dir, read_summary


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
    try:
        dirs = run_dirs(results_dir, sweep)
    except CollectError as err:
        raise SharpnessError(str(err)) from None
    runs, skipped = [], []
    for path in dirs:
        summary = read_summary(path, warn=True)
        summary = summary if isinstance(summary, dict) else {}
        status = summary.get("status") or "no summary.json"
        if status != COMPLETED:
            skipped.append((path.name, f"status {status}"))
        elif not checkpoint_dir(path, "final").is_dir():
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
    surface: dict  # arm -> run id of its 2D contour (the first seed at the sweep's largest k)
    pairs: list  # [(RunInfo a, RunInfo b)] interpolation endpoints, same k and seed


def plan_runs(runs: Sequence[RunInfo], opts: SharpnessConfig) -> Plan:
    seeds = sorted({r.seed for r in runs})
    chosen = set(seeds if opts.hessian_seeds is None else seeds[: opts.hessian_seeds])
    hessian = set()
    if opts.eigen_iters > 0 or opts.trace_samples > 0:
        hessian = {r.run_id for r in runs if r.seed in chosen}
    surface = {}
    if opts.surface_points > 0 and runs:
        # one k for every contour, so that the panels compare arms (the sweep's largest k: the question of the repo;
        # an arm without a run there, m-SAM in the default ablation, gets none)
        k_max = max(r.k for r in runs)
        for arm in dict.fromkeys(r.arm for r in runs):
            mine = [r for r in runs if r.arm == arm and r.k == k_max]
            if mine:
                surface[arm] = min(mine, key=lambda r: (r.seed, r.run_id)).run_id
    pairs = []
    if opts.interp_points > 0:
        cell = {}
        for r in runs:
            cell.setdefault((r.arm, r.k, r.seed), r)  # a rerun of the same cell: the first one stands for it
        for a, b in INTERPOLATION_PAIRS:
            for (arm, k, seed), run in cell.items():
                if arm == a and (b, k, seed) in cell:
                    pairs.append((run, cell[(b, k, seed)]))
    return Plan(hessian, surface, pairs)


def planned_passes(opts: SharpnessConfig, *, hessian: bool, surface: bool) -> dict[str, int]:
    """What one model costs with these settings: one forward on the train and one on the dev subset, forwards and
    forward+backward pairs on the landscape subset, HVPs and Hessian graph set-ups on the Hessian subset (at most:
    Lanczos stops early once its residual is below eigen_tol; the count includes the product that verifies it)."""
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
        "hvp": ((opts.eigen_iters + 1 if opts.eigen_iters else 0) + opts.trace_samples) if hessian else 0,
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
