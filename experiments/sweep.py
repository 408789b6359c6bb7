"""The sweep runner: a grid of configs → one training run each, skipping what is done and recording what failed.

    python -m experiments.sweep SWEEP.yaml [key=value ...] [--dry-run] [--jobs N] [--gpus auto|none|0,1]
                                [--gpus-per-run N] [--wandb-sweep OUT.yaml | --only RUN_ID]

`--wandb-sweep OUT.yaml` writes the W&B sweep of the same plan (a grid over its run ids) and `--only RUN_ID` trains
one run of the plan: what each W&B agent job calls (experiments/wandb_sweep.py).

What a sweep file holds and how it becomes runs: experiments/sweep_spec.py. Every run's config is resolved with
`experiments.config.load_config` before anything starts, so one bad value in any run is a one-line error and exit
code 2 with nothing written. Then each run goes to the training entry point as a subprocess (experiments/
sweep_runner.py), `python -m experiments.train <files> <overrides>`, its output to `<sweep dir>/logs/<run_id>.log`
(appended, one header line per attempt), and `<sweep dir>/sweep.json` records every run's state, rewritten
atomically at every change.

A run that a sweep named in the file's `reuse:` completed under the same run id and config hash is linked into
this sweep's folder (hard links, so no copy on disk; a copy across file systems) and then skipped like its own.
A run whose directory holds a completed (or diverged) summary.json with the same config hash is skipped; a failed or
interrupted one is started again (train.py resumes it from its checkpoint); a directory whose summary.json carries a
different config hash is never touched (recorded as skipped, with the reason). A run that fails or diverges is
recorded with its reason and the sweep goes on.

`--gpus-per-run N` (N > 1) makes each run data-parallel: one `torchrun --standalone --nproc_per_node=N` per run
(`python -m torch.distributed.run`, a free port each), `dist.world_size=N` added to every run's overrides (so its run
id says so), and the GPUs cut into slots of N (`CUDA_VISIBLE_DEVICES=0,1`, `2,3`, ...; GPUs left over are unused).
Without GPUs each run is N processes on the CPU (gloo), --jobs runs at a time. Exit code: 0 when every run is
completed, 1 when any is not, 2 for a config error, 130 after Ctrl-C (the running children get SIGINT, then SIGTERM
after a grace period, and are recorded as interrupted).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments import wandb_sweep
from experiments.config import is_path_name, split_key_value
from experiments.passes import compute_floor
from experiments.rundir import (
    COMPLETED,
    CONFLICT,
    DONE_STATUSES,
    ENV_FILE,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    read_json,
    read_summary,
    run_state,
    signal_exit_code,
    sweep_dir,
)
from experiments.sweep_runner import Manifest, Runner, format_duration, format_metric, pick_gpus
from experiments.sweep_spec import Run, SweepError, SweepSpec, expand, load_sweep

TRAIN_CMD_ENV = "SWEEP_TRAIN_CMD"  # a shell-quoted command that replaces `python -m experiments.train` (tests)


# Manifest statuses: pending (not started yet), running, completed, failed, diverged, skipped (its directory holds a
# different config: not touched), interrupted (stopped by Ctrl-C; the next invocation resumes it).


# ---------------------------------------------------------------------------------------------------------------------
# what is on disk already


def plan(run: Run) -> None:
    """Set run.action/status/reason from its run directory: skip (done), rerun (failed or interrupted),
    conflict (the directory holds another config), run (nothing there yet); experiments.rundir.run_state decides
    (its docstring has the table for the sweep)."""
    state = run_state(run.cfg, run.run_dir)
    summary = state.summary
    run.summary = summary or {}
    if summary is None:
        run.action, run.status, run.reason = "run", "pending", None
        return
    status, reason = summary.get("status"), summary.get("reason")
    stored_hash, own_hash = state.summary_hash, state.own_hash
    if state.decision == CONFLICT and state.changed_input is not None:
        run.action, run.status = "conflict", "skipped"
        run.reason = f"{state.changed_input}; its result is of the old input: delete the run directory to rerun it"
    elif state.decision == CONFLICT and stored_hash is not None:
        run.action, run.status = "conflict", "skipped"
        run.reason = f"its directory holds another config (hash {stored_hash}, this run's is {own_hash}); left as is"
    elif state.decision in DONE_STATUSES and stored_hash == own_hash:
        run.action, run.status, run.reason = "skip", status, reason
        run.wall_time_s = summary.get("wall_time_s")
    else:  # running (interrupted), failed, or a summary without a hash: train.py decides (it resumes or says done)
        run.action, run.status = "rerun", "pending"
        run.reason = f"previous attempt: {status}" + (f" ({reason})" if reason else "")


def reusable(run: Run, spec: SweepSpec) -> Path | None:
    """The folder of a completed run of the same id and config hash in one of spec.reuse's sweeps (first listed
    wins), when this sweep has nothing of its own there yet; else None."""
    if run.run_dir.exists():
        return None
    for other in spec.reuse:
        source = sweep_dir(run.cfg.results_dir, other) / run.run_id
        state = run_state(run.cfg, source)
        if state.decision == COMPLETED and state.summary_hash == state.own_hash:
            return source
    return None


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def link_reused(runs: list[Run], spec: SweepSpec) -> list[Run]:
    """Link every reusable run (see `reusable`) into this sweep's folder; returns the runs linked."""
    linked = []
    for run in runs:
        source = reusable(run, spec)
        if source is not None:
            run.run_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, run.run_dir, copy_function=_link_or_copy)
            linked.append(run)
    return linked


# ---------------------------------------------------------------------------------------------------------------------
# reporting


def table(runs: list[Run]) -> str:
    """The end-of-sweep table: one row per run, metrics from its summary.json `final`."""
    header = ("run id", "arm", "k", "seed", "status", "dev/f1", "dev/loss", "wall")
    rows = [header]
    for run in runs:
        summary = read_summary(run.run_dir) or run.summary or {}
        wall = summary.get("wall_time_s", run.wall_time_s)
        rows.append(
            (
                run.run_id,
                str(run.cfg.arm),
                str(run.cfg.train.accumulation_steps),
                str(run.cfg.seed),
                run.status,
                format_metric(summary, "dev/f1"),
                format_metric(summary, "dev/loss"),
                format_duration(wall) if isinstance(wall, (int, float)) else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {2, 3, 5, 6, 7}
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def dry_run_listing(spec: SweepSpec, runs: list[Run], folder: Path, cli: Sequence[str]) -> str:
    """What `--dry-run` prints: the shared part once, then one line per run (number, action, id, its own part)."""
    actions = ("run", "rerun", "reuse", "skip", "conflict")
    counts = {action: sum(run.action == action for run in runs) for action in actions}
    shown = ", ".join(f"{n} to {a}" if a != "conflict" else f"{n} left alone" for a, n in counts.items() if n)
    lines = [
        f"sweep {spec.name}: {len(runs)} runs ({shown}) in {folder}",
        f"  every run: {' '.join(spec.base)}  {' '.join([*spec.overrides, *cli, f'sweep={spec.name}'])}",
    ]
    width = max(len(run.run_id) for run in runs)
    for run in runs:
        extra = f"  + {' '.join(run.extra)}" if run.extra else ""
        note = f"  # {run.reason}" if run.reason and run.action != "skip" else ""
        lines.append(f"{run.index:>4}  {run.action:<8} {run.run_id:<{width}}  {run.label}{extra}{note}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# entry point


def _floor_skipped(started: list[Run]) -> str | None:
    """Why this call's runs have no compute floor, or None: the floor counts every update from scratch on one
    thread per run, so a resumed, failed or multi-threaded run would make the ratio mean something else."""
    for run in started:
        if run.action == "rerun":
            return f"{run.run_id} was rerun (it may have resumed: part of its passes ran before this call)"
        if run.status != COMPLETED:
            return f"{run.run_id} is {run.status}"
        env = read_json(Path(run.run_dir) / ENV_FILE)
        if env is None:
            return f"{run.run_id} wrote no {ENV_FILE}"
        threads = (env.get("device") or {}).get("threads")
        if threads != 1 or (env.get("device") or {}).get("type") != "cpu":
            return f"{run.run_id} trained on {threads} thread(s) of {(env.get('device') or {}).get('type')}"
    return None


def _print_floor(manifest: Manifest, started: list[Run], jobs: int, wall: float, on_cpu: bool) -> None:
    """The CPU sweep's distance from its compute floor (passes.compute_floor), printed and kept in sweep.json, for
    the runs this call started; the report's Setup states it. A call whose runs cannot be compared with the floor
    (GPUs, an interrupted call, a resumed, failed or multi-threaded run) clears the record and says why, so that
    the report never states an older call's floor."""
    manifest.compute = None
    why = "GPU sweep or interrupted" if not on_cpu else _floor_skipped(started)
    floor = None
    if why is None:
        try:  # the runs are done: a problem here must not turn a finished sweep into a failed one
            updates = [int((read_summary(run.run_dir) or {}).get("updates") or 0) or None for run in started]
            floor = compute_floor([run.cfg for run in started], jobs, updates=updates)
        except Exception as err:  # noqa: BLE001 - any failure only costs the floor line
            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if floor is None or floor["floor_s"] <= 0:
        manifest.write()
        if on_cpu:
            print(f"compute floor: not computed ({why or 'a run has no train.max_updates'})", flush=True)
        return
    floor.update(wall_s=round(wall, 1), runs=len(started))
    floor["ratio"] = round(floor["wall_s"] / floor["floor_s"], 2)  # from the recorded numbers, so they agree
    manifest.compute = floor
    manifest.write()
    print(
        f"compute floor: {floor['literal_example_passes']:,.0f} literal example-passes ({floor['flop'] / 1e12:.1f} "
        f"TFLOP) ÷ ({floor['jobs']} × {floor['peak_gflops']:.1f} GFLOP/s single-thread sgemm peak, measured now) = "
        f"{format_duration(floor['floor_s'])}; this call took {format_duration(wall)} = {floor['ratio']:.2f}× "
        f"the floor",
        flush=True,
    )


def _train_command(option: str | None) -> list[str]:
    text = option or os.environ.get(TRAIN_CMD_ENV)
    return shlex.split(text) if text else [sys.executable, "-m", "experiments.train"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run a grid of training runs (skips completed runs, resumes interrupted ones, records failures).",
    )
    parser.add_argument("sweep_file", help="a sweep YAML, e.g. configs/sweep/ablation.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value for every run (e.g. results_dir=/tmp/r)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and what would happen, then exit")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time on CPU (default 1)")
    parser.add_argument(
        "--gpus",
        default="auto",
        help="auto (one run per GPU when there are several), none, or device ids such as 0,1 (default auto); "
        "with GPUs, --jobs is the number of GPUs",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=int,
        default=1,
        help="N > 1: each run data-parallel over N GPUs (one torchrun per run; without GPUs, N CPU processes)",
    )
    engine = parser.add_mutually_exclusive_group()
    engine.add_argument(
        "--wandb-sweep",
        metavar="OUT.yaml",
        default=None,
        help="write the W&B sweep of this plan (grid over its run ids; agents call --only) and exit",
    )
    engine.add_argument(
        "--only", metavar="RUN_ID", default=None, help="train just this run of the plan (what a W&B agent job calls)"
    )
    parser.add_argument("--train-cmd", default=None, help=argparse.SUPPRESS)  # tests: a stand-in trainer
    return parser


def _is_key_value(text: str) -> bool:
    try:
        split_key_value(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    bad = [item for item in args.overrides if not _is_key_value(item)]  # a second sweep file, or a typo
    if bad:
        print(f"sweep: error: {bad[0]!r} is not key=value (the sweep file comes first, once)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.jobs < 1 or args.gpus_per_run < 1:
        print(f"sweep: error: {'--jobs' if args.jobs < 1 else '--gpus-per-run'} must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.wandb_sweep:  # the agents' runs report to W&B; tracking.* is outside the config hash: the same run ids
        args.overrides = wandb_sweep.agent_overrides(args.overrides)
    try:
        spec = load_sweep(args.sweep_file)
        cli = []
        for item in args.overrides:
            key, value = split_key_value(item)
            if key == "sweep":  # `sweep=NAME` renames the sweep
                if not is_path_name(value.strip()):
                    raise SweepError(f"sweep={value!r}: a sweep name is letters, digits, . _ -")
                spec.name = value.strip()
            else:
                cli.append(item)
        if args.gpus_per_run > 1:  # the run ids (and configs) say how many processes train each run
            cli.append(f"dist.world_size={args.gpus_per_run}")
        runs = expand(spec, cli)
        if args.wandb_sweep:
            config = wandb_sweep.wandb_sweep_config(spec, runs, args.sweep_file, args.overrides, args.gpus_per_run)
            path = wandb_sweep.write_wandb_sweep(config, args.wandb_sweep, args.sweep_file)
            print(f"sweep {spec.name}: W&B sweep of its {len(runs)} runs → {path} (then: wandb sweep {path})")
            return EXIT_OK
        gpus = [] if args.dry_run or args.only else pick_gpus(args.gpus, args.gpus_per_run)
    except SweepError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    folder = sweep_dir(runs[0].cfg.results_dir, spec.name)
    if args.dry_run:
        for run in runs:
            plan(run)
            if run.action == "run" and (source := reusable(run, spec)) is not None:
                run.action, run.reason = "reuse", f"completed in {source.parent.name}"
        print(dry_run_listing(spec, runs, folder, cli))
        return EXIT_OK
    linked = link_reused(runs, spec) if not args.only else []
    if linked:
        print(f"sweep {spec.name}: {len(linked)} completed runs of {', '.join(spec.reuse)} linked in, not rerun")
    for run in runs:
        plan(run)
    if args.only:
        return wandb_sweep.run_only(runs, args.only, spec.name, _train_command(args.train_cmd), args.gpus_per_run)

    manifest = Manifest(spec, runs, folder, cli)
    manifest.write()
    runner = Runner(runs, manifest, _train_command(args.train_cmd), args.jobs, gpus, args.gpus_per_run)
    todo = sum(run.action in ("run", "rerun") for run in runs)
    per_run = args.gpus_per_run
    where = (
        f"{len(gpus)} GPU slots of {per_run}"
        if gpus and per_run > 1
        else f"{len(gpus)} GPUs"
        if gpus
        else f"{runner.jobs} at a time" + (f", {per_run} processes each" if per_run > 1 else "")
    )
    print(
        f"sweep {spec.name}: {len(runs)} runs, {todo} to run ({where}), {len(runs) - todo} already done or left alone"
        f" → {manifest.path}",
        flush=True,
    )
    try:
        finished = runner.run()
    except KeyboardInterrupt:  # a signal before the handlers were in place
        finished = False
        runner.signals.append(signal.SIGINT)
    print()
    print(table(runs))
    counts = {
        status: sum(run.status == status for run in runs)
        for status in ("completed", "failed", "diverged", "skipped", "interrupted", "pending")
    }
    shown = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    wall = time.monotonic() - runner.t0
    print(f"sweep {spec.name}: {shown} in {format_duration(wall)} → {manifest.path}", flush=True)
    started = [r for r in runs if r.action in ("run", "rerun")]
    if started:
        _print_floor(manifest, started, runner.jobs, wall, on_cpu=not gpus and finished)
    if not finished:
        return signal_exit_code(runner.signals[0])  # 130 after Ctrl-C (SIGINT), 143 after SIGTERM
    return EXIT_OK if counts[COMPLETED] == len(runs) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
