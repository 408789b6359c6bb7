"""One sweep definition, two engines: the W&B sweep of a sweep file, and the entry point its agents call.

    python -m experiments.sweep SWEEP.yaml [key=value ...] [--gpus-per-run N] --wandb-sweep OUT.yaml
    wandb sweep OUT.yaml                      # prints the sweep id
    wandb agent ENTITY/PROJECT/SWEEP_ID       # on any number of machines, repo root, project venv first on PATH

The W&B sweep does not restate the design: it is a `method: grid` over one parameter, `only`, whose values are the
run ids of the repo's own plan (experiments.sweep_spec.expand: grid, exclude, include and `when`, so cells that are
not a full product, such as k = 1 only at seed 0 with its own budget, are exactly there). For each value the agent runs

    python -m experiments.sweep SWEEP.yaml [key=value ...] --only=<run id>

which expands the same plan on that machine, looks the id up, and trains that one run into the same run directory
(`<results_dir>/runs/<sweep>/<run id>/`) as `make run-all` would: a completed run is skipped, an interrupted one
resumes (experiments.train), a directory that holds another config is left alone. `tracking.mode=online` is added
(an agent's runs report to the sweep; tracking.* is not part of the config hash, so the run ids are the plan's).

Bringing the results back together: the run directories are the record (W&B mirrors them). Either every machine
writes to one `results_dir` on a shared filesystem (give `results_dir=/shared/results` when generating: it goes into
the agents' command), or each machine keeps its own and the run directories are copied into one results folder
afterwards (`rsync -a host:results/runs/ results/runs/`: run ids are unique per config, so folders never clash);
then `make report SWEEP=<name>` on the merged folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from experiments.provenance import REPO_ROOT
from experiments.rundir import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, signal_exit_code
from experiments.sweep_runner import torchrun_command
from experiments.sweep_spec import Run, SweepSpec

PARAMETER = "only"  # the one grid parameter; the agent passes it as --only=<run id> (the `${args}` macro)
AGENT_MODE = "tracking.mode=online"


def _repo_relative(path: str | os.PathLike) -> str:
    """A sweep file as the agents' command names it: relative to the repository root (agents start there)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(REPO_ROOT))
    except ValueError:
        return str(resolved)


def agent_overrides(cli: Sequence[str]) -> list[str]:
    """The command line's key=value items for the agents' command: as given, plus tracking.mode=online unless a
    tracking.mode is among them."""
    given = list(cli)
    if not any(item.split("=", 1)[0].strip() == "tracking.mode" for item in given):
        given.append(AGENT_MODE)
    return given


def wandb_sweep_config(
    spec: SweepSpec, runs: Sequence[Run], sweep_file: str | os.PathLike, cli: Sequence[str], gpus_per_run: int = 1
) -> dict:
    """The W&B sweep configuration (a dict in W&B's sweep YAML schema) whose grid is `runs`' ids, in the plan's order.

    `runs`: the plan expanded with agent_overrides(cli) (and dist.world_size when gpus_per_run > 1), so the ids are
    the ones the agents' `--only` looks up; `cli`: the key=value items as given on the command line."""
    first = runs[0].cfg
    command = ["${env}", "${interpreter}", "-m", "experiments.sweep", _repo_relative(sweep_file), *agent_overrides(cli)]
    if gpus_per_run > 1:
        command.append(f"--gpus-per-run={gpus_per_run}")
    config = {
        "name": spec.name,
        "program": "experiments/sweep.py",  # shown in the W&B UI; the command runs the module
        "method": "grid",
        "project": str(first.tracking.project),
        "command": [*command, "${args}"],  # ${args}: --only=<run id>
        "parameters": {PARAMETER: {"values": [run.run_id for run in runs]}},
    }
    if first.tracking.entity:
        config["entity"] = str(first.tracking.entity)
    return config


def write_wandb_sweep(config: dict, out: str | os.PathLike, sweep_file: str | os.PathLike) -> Path:
    """Write `config` as YAML to `out` under a header that says where it came from; returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = _repo_relative(sweep_file)
    header = (
        f"# Generated from {source} by `python -m experiments.sweep {source} --wandb-sweep {out}`:\n"
        "# regenerate it rather than edit it. A grid over the plan's run ids; each agent job is\n"
        "# `python -m experiments.sweep ... --only=<run id>`, the same config and run directory as the local sweep.\n"
        "#   wandb sweep THIS_FILE; then on every machine (repo root, project venv first on PATH):\n"
        "#   wandb agent ENTITY/PROJECT/SWEEP_ID\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_only(runs: Sequence[Run], run_id: str, sweep: str, train_cmd: list[str], gpus_per_run: int = 1) -> int:
    """Train the one run of the plan whose id is `run_id`, as the sweep runner would (same files, overrides and run
    directory), with its output on this process's stdout/stderr (a W&B agent captures it). A completed run is not
    trained again (exit 0); a directory holding another config is left alone (exit 1); an id that is not in the plan
    is an input error (exit 2). Otherwise the exit code is the training run's (a signal: 128 + its number).
    `runs` must have been planned (experiments.sweep.plan)."""
    match = [run for run in runs if run.run_id == run_id]
    if not match:
        print(
            f"sweep: error: --only {run_id!r} is not a run of sweep {sweep} ({len(runs)} runs; --dry-run lists them)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    (run,) = match
    if run.action == "skip":
        print(f"sweep {sweep}: {run_id} is already {run.status} in {run.run_dir}; nothing to do", flush=True)
        return EXIT_OK
    if run.action == "conflict":
        print(f"sweep: error: {run_id}: {run.reason} ({run.run_dir})", file=sys.stderr)
        return EXIT_FAILED
    command = torchrun_command(train_cmd, gpus_per_run) if gpus_per_run > 1 else list(train_cmd)
    command += [*run.files, *run.overrides]
    print(f"sweep {sweep}: run {run.index} of {len(runs)}, {run_id} → {run.run_dir}", flush=True)
    # its own session, so a terminal's Ctrl-C reaches it once (forwarded below), not twice
    child = subprocess.Popen(command, start_new_session=True)
    forward = {s: signal.signal(s, lambda signum, _frame: child.send_signal(signum)) for s in _FORWARDED}
    try:
        code = child.wait()
    finally:
        for s, previous in forward.items():
            signal.signal(s, previous)
    return signal_exit_code(-code) if code < 0 else code


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
