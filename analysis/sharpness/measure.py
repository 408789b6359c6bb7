"""Measuring a sweep: find and plan its runs, time one model, print the estimate, then measure every model and
interpolation pair (analysis.sharpness.qa does the measurements of one model)."""

import math
import multiprocessing
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from tqdm import tqdm

from analysis.sharpness.options import SharpnessConfig, SharpnessError
from analysis.sharpness.plan import estimate_seconds, find_runs, plan_runs, planned_passes
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
from experiments.allocator import keep_large_blocks_on_heap
from experiments.rundir import sweep_dir

TARGET_S = 300.0  # the default sweep's sharpness section is budgeted to 5 minutes on the 2-core CPU


class _Progress:
    """A tqdm bar over models on a terminal, plain lines otherwise; the per-model lines go to stdout either way."""

    def __init__(self, total: int, label: str):
        self.bar = None
        if sys.stderr.isatty():
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
    t_start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    threads = worker_threads(opts)
    torch.set_num_threads(threads)  # with jobs > 1 the timing probe then times what one worker will run
    runs, skipped = find_runs(opts.results_dir, opts.sweep)
    where = sweep_dir(opts.results_dir, opts.sweep)
    if not runs:
        why = "; ".join(f"{rid}: {reason}" for rid, reason in skipped[:3]) or "it holds no run directories"
        raise SharpnessError(f"no completed run with a checkpoint/final in {str(where)!r} ({why})")
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
    # the models and pairs are shared out among the workers (each pays its own imports, about a model load's worth)
    estimate = estimate_seconds(costs, list(plans.values()), len(plan.pairs), opts, load_s) / min(opts.jobs, len(runs))
    print(
        f"sharpness of sweep {opts.sweep!r}: {len(runs)} runs ({len(skipped)} left out), "
        f"{_workers(opts.jobs, threads)}, subsets of {Subsets.size(data.train)} train / "
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
    pool = _pool(data, opts, threads) if opts.jobs > 1 else None
    try:
        flags = [(run.run_id in plan.hessian, run.run_id in surface_ids) for run in runs]
        progress = _Progress(len(runs), "sharpness")
        try:
            for i, (run, (row, run_curves, counter, wall, t_load)) in enumerate(
                zip(runs, _measure_all(runs, flags, data, opts, model, pool), strict=True)
            ):
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
                        "hessian_measured": flags[i][0],
                        "surface_measured": flags[i][1],
                        **counter.as_dict(),
                    }
                )
                curves[run.run_id] = run_curves
                timing.append(
                    {
                        "what": run.run_id,
                        "load_s": round(t_load if i or pool else load_s, 3),
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
        model = None
        interp = []
        for (a, b), (out, counter, wall) in zip(plan.pairs, _measure_pairs(plan.pairs, data, opts, pool), strict=True):
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
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
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
        "threads": threads,
        "jobs": opts.jobs,
    }


# ---------------------------------------------------------------------------------------------------------------------
# one model, one pair; in this process or in `jobs` worker processes
#
# Every measure draws its randomness from explicit seeded generators and the models are in eval mode, so a model's
# numbers depend only on its checkpoint, the subsets, the options and torch's thread count: jobs=2 on 1 thread each
# gives the same bits as jobs=1 on 1 thread (tests/test_sharpness_cli.py), in about half the wall time on 2 cores.

_WORKER: dict[str, Any] = {}  # a worker process's subsets and options, set once by _init_worker


def _init_worker(threads: int, data: Subsets, opts: SharpnessConfig) -> None:
    keep_large_blocks_on_heap()
    torch.set_num_threads(threads)
    _WORKER.update(data=data, opts=opts)


def _one_model(model, path, data: Subsets, opts: SharpnessConfig, hessian: bool, surface: bool):
    """(row, curves, passes, wall seconds with the load, load seconds) of one checkpoint (`model`: it, loaded)."""
    t0 = time.perf_counter()
    if model is None:
        model = load_qa_model(path)
    t_load = time.perf_counter() - t0
    counter = PassCounter()
    row, curves = measure_model(model, data, opts, hessian=hessian, surface=surface, counter=counter)
    return row, curves, counter, time.perf_counter() - t0, t_load


def _one_pair(path_a, path_b, data: Subsets, opts: SharpnessConfig):
    t0 = time.perf_counter()
    counter = PassCounter()
    out = interpolation_pair(load_qa_model(path_a), load_qa_model(path_b), data, opts, counter)
    return out, counter, time.perf_counter() - t0


def _model_task(path, hessian: bool, surface: bool):
    return _one_model(None, path, _WORKER["data"], _WORKER["opts"], hessian, surface)


def _pair_task(path_a, path_b):
    return _one_pair(path_a, path_b, _WORKER["data"], _WORKER["opts"])


def worker_threads(opts: SharpnessConfig) -> int:
    """torch threads of each worker: `threads`, or the cores torch would use shared out among the jobs."""
    return opts.threads or max(1, torch.get_num_threads() // opts.jobs)


def _workers(jobs: int, threads: int) -> str:
    return f"{threads} thread{'s' * (threads > 1)}" + (f" in each of {jobs} worker processes" if jobs > 1 else "")


def _pool(data: Subsets, opts: SharpnessConfig, threads: int) -> ProcessPoolExecutor:
    # spawn, not fork: a child forked from a process whose OpenMP pool has run can hang in its first parallel region
    return ProcessPoolExecutor(
        max_workers=opts.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads, data, opts),
    )


def _measure_all(runs, flags, data: Subsets, opts: SharpnessConfig, first_model, pool) -> Iterator[tuple]:
    """_one_model's results in run order, here (pool None; `first_model`, the timing probe's, is runs[0]'s) or in
    the pool's workers."""
    if pool is None:
        for i, (run, (hessian, surface)) in enumerate(zip(runs, flags, strict=True)):
            yield _one_model(first_model if i == 0 else None, run.path, data, opts, hessian, surface)
        return
    futures = [pool.submit(_model_task, run.path, *flag) for run, flag in zip(runs, flags, strict=True)]
    for future in futures:
        yield future.result()


def _measure_pairs(pairs, data: Subsets, opts: SharpnessConfig, pool) -> Iterator[tuple]:
    if pool is None:
        for a, b in pairs:
            yield _one_pair(a.path, b.path, data, opts)
        return
    for future in [pool.submit(_pair_task, a.path, b.path) for a, b in pairs]:
        yield future.result()
