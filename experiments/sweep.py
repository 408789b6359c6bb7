"""The sweep runner: a grid of configs → one training run each, skipping what is done and recording what failed.

    python -m experiments.sweep SWEEP.yaml [key=value ...] [--dry-run] [--jobs N] [--gpus auto|none|0,1]
                                [--gpus-per-run N]

A sweep file:

    name: ablation                      # runs go to <results_dir>/runs/<name>/<run_id>/
    base: [configs/default.yaml]        # config files every run starts from, in order
    grid:                               # the cross product, in this order: the first key varies slowest
      arm: [configs/arm/adamw.yaml, configs/arm/sam_full.yaml]   # a string ending in .yaml/.yml is a config file
      train.accumulation_steps: [1, 4]  # any other value becomes key=value (here train.accumulation_steps=1)
      seed: [0, 1, 2]
    overrides:                          # key: value (or a list of "key=value") for every run
      train.max_updates: 30
    when:                               # extra overrides for the runs whose config matches
      - match: {optim.replay: [full, last, micro]}      # a list means "any of"
        overrides: {diagnostics.grad_fidelity: true}
    exclude:                            # drop the grid points whose config matches any of these
      - {arm: sam_micro, train.accumulation_steps: 1}
    include:                            # extra points after the grid (exclude does not apply to them)
      - {arm: configs/arm/sam_micro.yaml, train.accumulation_steps: 8, seed: 0}

A grid value may also be a mapping of several overrides that go together (`lr: [{optim.lr: 1e-4, optim.rho: 0.1}]`);
the grid key of a file or mapping axis is only its label. `match`/`exclude` keys are config keys (dotted), checked
against the run's resolved config before the `when` overrides are added, so `arm: sam_micro` matches the label the
arm file sets. One run's config = base files + the grid's files, then the overrides in this order: the sweep's
`overrides`, the grid point's, the matching `when` rules', the command line's, and `sweep=<name>`
(a `sweep=NAME` on the command line renames the sweep).

Every run's config is resolved with `experiments.config.load_config` before anything starts, so one bad value in any
run is a one-line error and exit code 2 with nothing written. Then each run goes to the training entry point as a
subprocess, `python -m experiments.train <files> <overrides>`, its output to `<sweep dir>/logs/<run_id>.log`
(appended, one header line per attempt), and `<sweep dir>/sweep.json` records every run's state, rewritten
atomically at every change.

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
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from experiments.config import (
    REPO_ROOT,
    ConfigError,
    config_hash,
    load_config,
    parse_value,
    read_yaml_text,
    run_id,
    typed_value,
)
from experiments.rundir import DONE_STATUSES, _read_json, atomic_write_json, run_dir

SWEEP_KEYS = ("name", "description", "base", "grid", "overrides", "when", "exclude", "include", "report")
# what the report of a sweep may be told (recorded in sweep.json for analysis.report)
REPORT_TARGET_METRICS = ("dev/f1", "dev/em", "dev/rouge_w", "dev/loss")
WHEN_KEYS = ("match", "overrides")
CONFIG_SUFFIXES = (".yaml", ".yml")
TRAIN_CMD_ENV = "SWEEP_TRAIN_CMD"  # a shell-quoted command that replaces `python -m experiments.train` (tests)
INTERRUPT_GRACE_S = 30.0  # after Ctrl-C, how long children get to save a resume checkpoint before SIGTERM
KILL_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
POLL_S = 0.1

# Manifest statuses: pending (not started yet), running, completed, failed, diverged, skipped (its directory holds a
# different config: not touched), interrupted (stopped by Ctrl-C; the next invocation resumes it).


class SweepError(ValueError):
    """A problem with the sweep file or with one run's config; the message is one line. Exit code 2."""


# ---------------------------------------------------------------------------------------------------------------------
# the sweep file


def _format_value(value: Any) -> str:
    """A sweep-file value as the right-hand side of `key=value`, such that `parse_override` reads back the same value
    for whatever key it goes to: text as it was written (the schema types it), quoted when it would not survive
    as is (null, enclosing quotes, YAML syntax, surrounding spaces, the empty string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        try:
            same = parse_value(value, str) == value and read_yaml_text(value) == value
        except Exception:  # noqa: BLE001 - not valid YAML on its own: quote it
            same = False
        return value if same else json.dumps(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)  # JSON is YAML flow style
    raise SweepError(f"cannot pass a {type(value).__name__} ({value!r}) as an override")


def _overrides_from(node: Any, where: str) -> list[str]:
    """`{key: value}` or `["key=value", ...]` (or None) → ["key=value", ...]."""
    if node is None:
        return []
    if isinstance(node, dict):
        return [f"{key}={_format_value(value)}" for key, value in node.items()]
    if isinstance(node, list) and all(isinstance(item, str) and "=" in item for item in node):
        return list(node)
    raise SweepError(f"{where} must be a mapping of key: value or a list of 'key=value' strings")


def _is_config_file(value: Any) -> bool:
    return isinstance(value, str) and value.endswith(CONFIG_SUFFIXES) and "=" not in value


def _good_name(name: Any) -> bool:
    """A sweep name is a folder name: letters, digits, dot, underscore, dash."""
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and all(c.isalnum() or c in "._-" for c in name)
    )


def _resolve_file(path: str) -> str:
    """A config path as given when it exists from the working directory, else relative to the repo root."""
    if Path(path).is_file() or Path(path).is_absolute():
        return path
    in_repo = REPO_ROOT / path
    return str(in_repo) if in_repo.is_file() else path  # a missing file is load_config's error to report


@dataclass
class SweepSpec:
    name: str
    path: str
    base: list[str]
    grid: dict[str, list]
    overrides: list[str]
    when: list[tuple[dict, list[str]]]
    exclude: list[dict]
    include: list[dict]
    report: dict = field(default_factory=dict)  # {"targets": {metric: [values]}}: read by analysis.report


def _check_report(node: Any, where: str) -> dict:
    """The optional `report:` block: `targets: {dev/f1: [50, 80, 90], dev/loss: [1.0]}` (updates-to-target)."""
    if node is None:
        return {}
    if not isinstance(node, dict) or set(node) - {"targets"}:
        raise SweepError(f"{where}: report must be a mapping with the key targets")
    targets = node.get("targets") or {}
    if not isinstance(targets, dict):
        raise SweepError(f"{where}: report.targets must map a metric ({', '.join(REPORT_TARGET_METRICS)}) to a list")
    out = {}
    for metric, values in targets.items():
        if metric not in REPORT_TARGET_METRICS:
            raise SweepError(
                f"{where}: report.targets.{metric} is not a dev metric; choose from {', '.join(REPORT_TARGET_METRICS)}"
            )
        # sweep files keep plain scalars as text (experiments.config.read_yaml_text): the numbers are parsed here
        try:
            numbers = [float(v) for v in values] if isinstance(values, list) and values else None
        except (TypeError, ValueError):
            numbers = None
        if not numbers or not all(math.isfinite(v) for v in numbers):
            raise SweepError(f"{where}: report.targets.{metric} must be a non-empty list of numbers")
        out[metric] = numbers
    return {"targets": out}


def _check_condition(rule: Any, where: str) -> dict:
    if not isinstance(rule, dict) or not rule:
        raise SweepError(f"{where} must be a non-empty mapping of config key: value (or list of values)")
    return rule


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a sweep file (shape only; the configs are checked when the runs are expanded)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r}: no such file")
    try:
        # values are kept as the text written and typed by each key's schema type, as in config files
        data = read_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SweepError(f"sweep file {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SweepError(f"sweep file {str(path)!r} must hold a mapping (name, base, grid, ...)")
    where_file = f"sweep file {str(path)!r}"
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(
            f"sweep file {str(path)!r}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SWEEP_KEYS)}"
        )
    name = data.get("name")
    if not _good_name(name):
        raise SweepError(f"sweep file {str(path)!r}: name must be a non-empty string of letters, digits, . _ -")
    base = data.get("base") or []
    base = [base] if isinstance(base, str) else base
    if not isinstance(base, list) or not all(isinstance(item, str) for item in base):
        raise SweepError(f"sweep file {str(path)!r}: base must be a config file or a list of config files")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"sweep file {str(path)!r}: grid must be a mapping of key: [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep file {str(path)!r}: grid.{key} must be a non-empty list of values")
    when = []
    for number, rule in enumerate(data.get("when") or []):
        where = f"sweep file {str(path)!r}: when[{number}]"
        if not isinstance(rule, dict) or set(rule) != set(WHEN_KEYS):
            raise SweepError(f"{where} must have exactly the keys match and overrides")
        when.append((_check_condition(rule["match"], f"{where}.match"), _overrides_from(rule["overrides"], where)))
    exclude = [_check_condition(r, f"{where_file}: exclude[{n}]") for n, r in enumerate(data.get("exclude") or [])]
    include = [_check_condition(p, f"{where_file}: include[{n}]") for n, p in enumerate(data.get("include") or [])]
    if not grid and not include:
        raise SweepError(f"sweep file {str(path)!r}: no runs (grid and include are both empty)")
    return SweepSpec(
        name=name,
        path=str(path),
        base=[_resolve_file(item) for item in base],
        grid=grid,
        overrides=_overrides_from(data.get("overrides"), f"sweep file {str(path)!r}: overrides"),
        when=when,
        exclude=exclude,
        include=include,
        report=_check_report(data.get("report"), where_file),
    )


# ---------------------------------------------------------------------------------------------------------------------
# expanding the grid into runs


@dataclass
class Run:
    index: int  # 1-based position in the sweep
    point: dict  # grid key → the value as written in the sweep file
    files: list[str]
    overrides: list[str]  # everything after the files, `sweep=<name>` last
    cfg: DictConfig
    run_id: str
    run_dir: Path
    extra: list[str] = field(default_factory=list)  # the overrides its matching `when` rules added
    # filled by the planner and the runner
    action: str = "run"  # run | rerun | skip | conflict
    status: str = "pending"
    reason: str | None = None
    exit_code: int | None = None
    wall_time_s: float | None = None
    summary: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(f"{key}={_point_label(value)}" for key, value in self.point.items())


def _point_label(value: Any) -> str:
    if _is_config_file(value):
        return Path(value).stem
    if isinstance(value, dict):
        return ",".join(f"{k}={_format_value(v)}" for k, v in value.items())
    return _format_value(value)


def _point_args(point: dict, where: str) -> tuple[list[str], list[str]]:
    """A grid point → (its config files, its overrides)."""
    files, overrides = [], []
    for key, value in point.items():
        if _is_config_file(value):
            files.append(_resolve_file(value))
        elif isinstance(value, dict):
            overrides += _overrides_from(value, f"{where} {key}")
        else:
            overrides.append(f"{key}={_format_value(value)}")
    return files, overrides


_MISSING = object()


def _typed(key: str, value: Any) -> Any:
    """A match value as the config stores it for `key` ("4" → 4), or a marker that equals nothing if it cannot be."""
    try:
        return typed_value(key, value)
    except ConfigError:
        return _MISSING


def _matches(cfg: DictConfig, rule: dict, where: str) -> bool:
    for key, wanted in rule.items():
        actual = OmegaConf.select(cfg, str(key), default=_MISSING)
        if actual is _MISSING:
            raise SweepError(f"{where}: unknown config key {key!r}")
        if OmegaConf.is_config(actual):
            actual = OmegaConf.to_container(actual, resolve=True)
        options = wanted if isinstance(wanted, list) else [wanted]  # a list means "any of" (or a list value)
        if actual not in [_typed(str(key), o) for o in options] and actual != _typed(str(key), wanted):
            return False
    return True


def _points(spec: SweepSpec) -> list[tuple[dict, bool]]:
    """(point, from_grid) in the sweep's order: the grid's cross product, then the include points."""
    points = []
    if spec.grid:
        keys = list(spec.grid)
        for values in itertools.product(*(spec.grid[key] for key in keys)):
            points.append((dict(zip(keys, values)), True))
    points += [(dict(point), False) for point in spec.include]
    return points


def expand(spec: SweepSpec, cli_overrides: Sequence[str] = ()) -> list[Run]:
    """Every run of the sweep, each with its resolved config; raises SweepError (one line) for any bad run."""
    cli = list(cli_overrides)
    runs: list[Run] = []
    seen: dict[Path, Run] = {}
    for number, (point, from_grid) in enumerate(_points(spec), start=1):
        where = f"run {number} ({' '.join(f'{k}={_point_label(v)}' for k, v in point.items())})"
        files, point_overrides = _point_args(point, where)
        files = spec.base + files
        tail = [f"sweep={spec.name}"]
        try:
            cfg = load_config(files, spec.overrides + point_overrides + cli + tail)
            if from_grid and any(_matches(cfg, rule, f"{where}: exclude") for rule in spec.exclude):
                continue
            extra = [o for rule, added in spec.when if _matches(cfg, rule, f"{where}: when") for o in added]
            overrides = spec.overrides + point_overrides + extra + cli + tail
            if extra:
                cfg = load_config(files, overrides)
        except ConfigError as err:
            raise SweepError(f"{where}: {err}") from None
        directory = run_dir(cfg)
        if directory in seen:
            first = seen[directory]
            if config_hash(first.cfg) != config_hash(cfg):
                raise SweepError(f"{where}: same run directory as run {first.index}, another config ({directory})")
            continue  # the same experiment twice (e.g. a command-line override collapsed two grid values): run it once
        run = Run(len(runs) + 1, point, files, overrides, cfg, run_id(cfg), directory, extra)
        seen[directory] = run
        runs.append(run)
    if not runs:
        raise SweepError(f"sweep {spec.name}: no runs left (exclude drops every grid point)")
    roots = {Path(run.cfg.results_dir) for run in runs}
    if len(roots) > 1:
        raise SweepError(f"the runs of one sweep must share results_dir; got {', '.join(sorted(map(str, roots)))}")
    return runs


# ---------------------------------------------------------------------------------------------------------------------
# what is on disk already


def plan(run: Run) -> None:
    """Set run.action/status/reason from its run directory: skip (done), rerun (failed or interrupted),
    conflict (the directory holds another config), run (nothing there yet)."""
    summary = _read_json(run.run_dir / "summary.json")
    run.summary = summary or {}
    if summary is None:
        run.action, run.status, run.reason = "run", "pending", None
        return
    status, reason = summary.get("status"), summary.get("reason")
    stored_hash, own_hash = summary.get("config_hash"), config_hash(run.cfg)
    if stored_hash is not None and stored_hash != own_hash:
        run.action, run.status = "conflict", "skipped"
        run.reason = f"its directory holds another config (hash {stored_hash}, this run's is {own_hash}); left as is"
    elif status in DONE_STATUSES and stored_hash == own_hash:
        run.action, run.status, run.reason = "skip", status, reason
        run.wall_time_s = summary.get("wall_time_s")
    else:  # running (interrupted), failed, or a summary without a hash: train.py decides (it resumes or says done)
        run.action, run.status = "rerun", "pending"
        run.reason = f"previous attempt: {status}" + (f" ({reason})" if reason else "")


# ---------------------------------------------------------------------------------------------------------------------
# the manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """`<sweep dir>/sweep.json`: the sweep's runs and their states, rewritten atomically at every change."""

    def __init__(self, spec: SweepSpec, runs: list[Run], sweep_dir: Path, cli_overrides: Sequence[str]):
        self.path = sweep_dir / "sweep.json"
        self.spec, self.runs, self.cli = spec, runs, list(cli_overrides)
        previous = _read_json(self.path) or {}
        self.created = previous.get("created") or _now()
        self.log_dir = sweep_dir / "logs"

    def log_path(self, run: Run) -> Path:
        return self.log_dir / f"{run.run_id}.log"

    def entry(self, run: Run) -> dict:
        return {
            "run_id": run.run_id,
            "index": run.index,
            "arm": run.cfg.arm,
            "point": {key: _point_label(value) for key, value in run.point.items()},
            "files": list(run.files),
            "overrides": list(run.overrides),
            "action": run.action,
            "status": run.status,
            "reason": run.reason,
            "exit_code": run.exit_code,
            "wall_time_s": None if run.wall_time_s is None else round(float(run.wall_time_s), 3),
            "run_dir": str(run.run_dir),
            "log": str(self.log_path(run)),
        }

    def write(self) -> None:
        atomic_write_json(
            self.path,
            {
                "name": self.spec.name,
                "sweep_file": self.spec.path,
                "cli_overrides": self.cli,
                "report": self.spec.report,
                "created": self.created,
                "updated": _now(),
                "runs": [self.entry(run) for run in self.runs],
            },
        )


# ---------------------------------------------------------------------------------------------------------------------
# running


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _metric(summary: dict, key: str) -> str:
    value = (summary.get("final") or {}).get(key) if isinstance(summary.get("final"), dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4g}"
    return "-"


def _last_line(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _cuda_device_count() -> int:
    import torch  # only here: the runner itself needs no torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick_gpus(choice: str, per_run: int = 1) -> list[str]:
    """--gpus (and --gpus-per-run) → the CUDA_VISIBLE_DEVICES value of each slot, a slot being `per_run` GPUs
    ([] = leave the children's devices alone: one run at a time per --jobs, on whatever device it picks)."""
    if choice == "none":
        return []
    if choice == "auto":
        count = _cuda_device_count()
        if count <= (1 if per_run == 1 else 0):  # one run on one GPU needs no slots; several GPUs per run do
            return []
        visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        gpus = visible[:count] if len(visible) >= count else [str(i) for i in range(count)]
    else:
        gpus = [d.strip() for d in choice.split(",") if d.strip()]
        if not gpus:
            raise SweepError(f"--gpus {choice!r}: expected auto, none or a list of device ids such as 0,1")
    return gpu_slots(gpus, per_run)


def gpu_slots(gpus: list[str], per_run: int) -> list[str]:
    """Consecutive groups of `per_run` device ids, each a CUDA_VISIBLE_DEVICES value ("0,1"); a remainder is unused."""
    if len(gpus) < per_run:
        raise SweepError(f"--gpus-per-run {per_run} needs at least {per_run} GPUs; got {len(gpus)} ({','.join(gpus)})")
    return [",".join(gpus[i : i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]


def torchrun_command(train_cmd: list[str], nproc: int) -> list[str]:
    """`python -m experiments.train` (or `python SCRIPT`) → the same under torchrun with `nproc` processes, started
    by the same interpreter (`python -m torch.distributed.run` is the `torchrun` console script)."""
    return [train_cmd[0], "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train_cmd[1:]]


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class _Child:
    run: Run
    proc: subprocess.Popen
    log: Any
    started: float
    gpu: str | None


class Runner:
    def __init__(
        self,
        runs: list[Run],
        manifest: Manifest,
        train_cmd: list[str],
        jobs: int,
        gpus: list[str],
        procs_per_run: int = 1,
    ):
        """gpus: one CUDA_VISIBLE_DEVICES value per slot ([]: --jobs slots that leave the devices alone);
        procs_per_run > 1: each run is a torchrun of that many processes."""
        self.runs, self.manifest = runs, manifest
        self.train_cmd = torchrun_command(train_cmd, procs_per_run) if procs_per_run > 1 else train_cmd
        self.gpus = list(gpus)
        self.jobs = len(gpus) if gpus else max(1, jobs)
        # CPU runs side by side share the cores, unless the user chose the thread count (config or environment).
        processes = self.jobs * procs_per_run
        self.threads = max(1, _cpu_cores() // processes) if not gpus and processes > 1 else None
        self.total = len(runs)
        self.t0 = time.monotonic()
        self.walls: list[tuple[str, float]] = []  # (arm, wall time) of the runs finished in this invocation
        self.signals: list[int] = []

    # -- progress ----------------------------------------------------------------------------------------------------

    def _estimate(self, arm: str) -> float | None:
        same = [wall for a, wall in self.walls if a == arm]
        pool = same or [wall for _, wall in self.walls]
        return sum(pool) / len(pool) if pool else None

    def _eta(self, queue: list[Run], running: list[_Child]) -> str:
        now = time.monotonic()
        left = 0.0
        for run in queue:
            estimate = self._estimate(run.cfg.arm)
            if estimate is None:
                return "?"
            left += estimate
        for child in running:
            estimate = self._estimate(child.run.cfg.arm)
            if estimate is None:
                return "?"
            left += max(0.0, estimate - (now - child.started))
        return _duration(left / self.jobs)

    def _say(self, text: str) -> None:
        print(text, flush=True)

    # -- children ----------------------------------------------------------------------------------------------------

    def _changed(self, run: Run) -> str | None:
        """Why the run's config no longer resolves to what the sweep planned (a file edited mid-sweep), or None."""
        try:
            now = load_config(run.files, run.overrides)
        except ConfigError as err:
            return f"its config no longer loads: {err}"
        planned, current = config_hash(run.cfg), config_hash(now)
        if planned != current:
            return f"its config files changed since the sweep started (hash {planned} -> {current}); rerun the sweep"
        return None

    def _start(self, run: Run, gpu: str | None) -> _Child | None:
        changed = self._changed(run)
        if changed:
            run.status, run.reason, run.exit_code, run.wall_time_s = "failed", changed, None, None
            self.manifest.write()
            self._say(f"[{run.index}/{self.total}] {run.run_id} failed: {changed}")
            return None
        log_path = self.manifest.log_path(run)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [*self.train_cmd, *run.files, *run.overrides]
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif self.threads and run.cfg.train.num_threads is None and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(self.threads)
        log = open(log_path, "a", encoding="utf-8")
        log.write(f"# sweep {self.manifest.spec.name}: {run.action} started {_now()}: {shlex.join(command)}\n")
        log.flush()
        # A session of its own: a terminal's Ctrl-C reaches only the runner, which forwards exactly one SIGINT.
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        run.status, run.reason, run.exit_code, run.wall_time_s = "running", None, None, None
        self.manifest.write()
        where = f" on GPU {gpu}" if gpu is not None else ""
        self._say(f"[{run.index}/{self.total}] start {run.run_id}  ({run.label}){where}")
        return _Child(run, proc, log, time.monotonic(), gpu)

    def _finish(self, child: _Child, code: int, interrupted: bool = False) -> None:
        child.log.close()
        run = child.run
        run.exit_code = code
        run.wall_time_s = time.monotonic() - child.started
        summary = _read_json(run.run_dir / "summary.json") or {}
        run.summary = summary
        said, said_reason = summary.get("status"), summary.get("reason")
        if interrupted and not (code == 0 and said == "completed"):  # one that finished in the grace period counts
            from experiments.checkpoint import resume_point

            point = resume_point(run.run_dir)
            run.status = "interrupted"
            run.reason = f"interrupted by the sweep runner (exit code {code}); the next invocation " + (
                f"resumes it from update {point}" if point is not None else "starts it over (no resume checkpoint)"
            )
        elif code == 0 and said == "completed":
            run.status, run.reason = "completed", None
        elif code == 0:
            run.status = "failed"
            run.reason = (
                f"exited 0 but summary.json says status={said!r}"
                if summary
                else f"exited 0 but wrote no summary.json in {run.run_dir}"
            )
        else:
            run.status = "diverged" if code == 3 or said == "diverged" else "failed"
            if said in ("failed", "diverged") and said_reason:
                run.reason = str(said_reason)
            elif code < 0:
                run.reason = f"killed by signal {-code}"
            else:
                run.reason = _last_line(self.manifest.log_path(run)) or f"exit code {code}"
        self.manifest.write()
        if not interrupted:
            self.walls.append((run.cfg.arm, run.wall_time_s))

    def _progress(self, child: _Child, queue: list[Run], running: list[_Child]) -> None:
        run = child.run
        metrics = f"dev/f1={_metric(run.summary, 'dev/f1')} dev/loss={_metric(run.summary, 'dev/loss')}"
        why = f"  ({run.reason})" if run.status != "completed" and run.reason else ""
        done = len(self.walls)
        to_run = done + len(queue) + len(running)
        self._say(
            f"[{run.index}/{self.total}] {run.run_id} {run.status} in {_duration(run.wall_time_s)}  {metrics}{why}"
            f" | {done}/{to_run} done, elapsed {_duration(time.monotonic() - self.t0)}, ETA {self._eta(queue, running)}"
        )

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def _stop(self, running: list[_Child]) -> None:
        """Forward SIGINT to every child, give them INTERRUPT_GRACE_S to save and exit, then SIGTERM, then SIGKILL."""
        self._say(f"interrupted: stopping {len(running)} running run(s) (Ctrl-C again to stop at once)")
        count = len(self.signals)
        for sig, grace in ((signal.SIGINT, INTERRUPT_GRACE_S), (signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
            alive = [child for child in running if child.proc.poll() is None]
            if not alive:
                break
            for child in alive:
                try:
                    os.killpg(child.proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (grace if grace is not None else 30.0)
            while time.monotonic() < deadline and any(c.proc.poll() is None for c in alive):
                if len(self.signals) > count:  # asked again: no more waiting
                    count = len(self.signals)
                    break
                time.sleep(POLL_S)
        for child in running:
            code = child.proc.wait()
            self._finish(child, code, interrupted=True)

    def run(self) -> bool:
        """Run every run whose action is run/rerun; False when the sweep was interrupted."""
        queue = [run for run in self.runs if run.action in ("run", "rerun")]
        free = list(self.gpus) if self.gpus else [None] * self.jobs
        running: list[_Child] = []
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while queue or running:
                if self.signals:
                    self._stop(running)
                    return False
                while queue and free:
                    slot = free.pop(0)
                    child = self._start(queue.pop(0), slot)
                    if child is None:
                        free.insert(0, slot)
                    else:
                        running.append(child)
                for child in list(running):
                    code = child.proc.poll()
                    if code is None:
                        continue
                    running.remove(child)
                    free.append(child.gpu)
                    self._finish(child, code)
                    self._progress(child, queue, running)
                time.sleep(POLL_S)
            return True
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------------------------
# reporting


def table(runs: list[Run]) -> str:
    """The end-of-sweep table: one row per run, metrics from its summary.json `final`."""
    header = ("run id", "arm", "k", "seed", "status", "dev/f1", "dev/loss", "wall")
    rows = [header]
    for run in runs:
        summary = _read_json(run.run_dir / "summary.json") or run.summary or {}
        wall = summary.get("wall_time_s", run.wall_time_s)
        rows.append(
            (
                run.run_id,
                str(run.cfg.arm),
                str(run.cfg.train.accumulation_steps),
                str(run.cfg.seed),
                run.status,
                _metric(summary, "dev/f1"),
                _metric(summary, "dev/loss"),
                _duration(wall) if isinstance(wall, (int, float)) else "-",
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


def dry_run_listing(spec: SweepSpec, runs: list[Run], sweep_dir: Path, cli: Sequence[str]) -> str:
    """What `--dry-run` prints: the shared part once, then one line per run (number, action, id, its own part)."""
    counts = {action: sum(run.action == action for run in runs) for action in ("run", "rerun", "skip", "conflict")}
    shown = ", ".join(f"{n} to {a}" if a != "conflict" else f"{n} left alone" for a, n in counts.items() if n)
    lines = [
        f"sweep {spec.name}: {len(runs)} runs ({shown}) in {sweep_dir}",
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
    parser.add_argument("--train-cmd", default=None, help=argparse.SUPPRESS)  # tests: a stand-in trainer
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        print(f"sweep: error: {bad[0]!r} is not key=value (the sweep file comes first, once)", file=sys.stderr)
        return 2
    if args.jobs < 1 or args.gpus_per_run < 1:
        print(f"sweep: error: {'--jobs' if args.jobs < 1 else '--gpus-per-run'} must be >= 1", file=sys.stderr)
        return 2
    try:
        spec = load_sweep(args.sweep_file)
        cli = []
        for item in args.overrides:
            key, value = item.split("=", 1)
            if key.strip() == "sweep":  # `sweep=NAME` renames the sweep
                if not _good_name(value.strip()):
                    raise SweepError(f"sweep={value!r}: a sweep name is letters, digits, . _ -")
                spec.name = value.strip()
            else:
                cli.append(item)
        if args.gpus_per_run > 1:  # the run ids (and configs) say how many processes train each run
            cli.append(f"dist.world_size={args.gpus_per_run}")
        runs = expand(spec, cli)
        gpus = [] if args.dry_run else pick_gpus(args.gpus, args.gpus_per_run)
    except SweepError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    sweep_dir = Path(runs[0].cfg.results_dir) / "runs" / spec.name
    for run in runs:
        plan(run)
    if args.dry_run:
        print(dry_run_listing(spec, runs, sweep_dir, cli))
        return 0

    manifest = Manifest(spec, runs, sweep_dir, cli)
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
    print(f"sweep {spec.name}: {shown} in {_duration(time.monotonic() - runner.t0)} → {manifest.path}", flush=True)
    if not finished:
        return 128 + int(runner.signals[0])  # 130 after Ctrl-C (SIGINT), 143 after SIGTERM
    return 0 if counts["completed"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
