"""The sweep's manifest (sweep.json) and the runner that starts each run as a subprocess."""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments.checkpoint import resume_point
from experiments.config import ConfigError, config_hash, load_config
from experiments.rundir import (
    COMPLETED,
    DIVERGED,
    EXIT_DIVERGED,
    FAILED,
    MANIFEST_FILE,
    RUNNING,
    atomic_write_json,
    read_json,
    read_summary,
)
from experiments.sweep_spec import Run, SweepError, SweepSpec, point_label

INTERRUPT_GRACE_S = 30.0  # after Ctrl-C, how long children get to save a resume checkpoint before SIGTERM
KILL_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
POLL_S = 0.1


# ---------------------------------------------------------------------------------------------------------------------
# the manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """`<sweep dir>/sweep.json`: the sweep's runs and their states, rewritten atomically at every change."""

    def __init__(self, spec: SweepSpec, runs: list[Run], sweep_dir: Path, cli_overrides: Sequence[str]):
        self.path = sweep_dir / MANIFEST_FILE
        self.spec, self.runs, self.cli = spec, runs, list(cli_overrides)
        previous = read_json(self.path) or {}
        self.created = previous.get("created") or _now()
        # the last call's compute floor and wall time (experiments.passes.compute_floor; None when that call's runs
        # could not be compared with it: GPUs, interrupted, resumed, failed or multi-threaded)
        self.compute = previous.get("compute")
        self.log_dir = sweep_dir / "logs"

    def log_path(self, run: Run) -> Path:
        return self.log_dir / f"{run.run_id}.log"

    def entry(self, run: Run) -> dict:
        return {
            "run_id": run.run_id,
            "index": run.index,
            "arm": run.cfg.arm,
            "point": {key: point_label(value) for key, value in run.point.items()},
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
                "compute": self.compute,
                "runs": [self.entry(run) for run in self.runs],
            },
        )


# ---------------------------------------------------------------------------------------------------------------------
# running


def format_duration(seconds: float) -> str:
    """Seconds as the progress lines show them: 12.3s, 4m05s, 2h07m."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_metric(summary: dict, key: str) -> str:
    """summary["final"][key] to 4 significant digits ("nan" for NaN, "-" when missing or not a number)."""
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
        return format_duration(left / self.jobs)

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
            run.status, run.reason, run.exit_code, run.wall_time_s = FAILED, changed, None, None
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
        run.status, run.reason, run.exit_code, run.wall_time_s = RUNNING, None, None, None
        self.manifest.write()
        where = f" on GPU {gpu}" if gpu is not None else ""
        self._say(f"[{run.index}/{self.total}] start {run.run_id}  ({run.label}){where}")
        return _Child(run, proc, log, time.monotonic(), gpu)

    def _finish(self, child: _Child, code: int, interrupted: bool = False) -> None:
        child.log.close()
        run = child.run
        run.exit_code = code
        run.wall_time_s = time.monotonic() - child.started
        summary = read_summary(run.run_dir) or {}
        run.summary = summary
        said, said_reason = summary.get("status"), summary.get("reason")
        if interrupted and not (code == 0 and said == COMPLETED):  # one that finished in the grace period counts
            point = resume_point(run.run_dir)
            run.status = "interrupted"
            run.reason = f"interrupted by the sweep runner (exit code {code}); the next invocation " + (
                f"resumes it from update {point}" if point is not None else "starts it over (no resume checkpoint)"
            )
        elif code == 0 and said == COMPLETED:
            run.status, run.reason = COMPLETED, None
        elif code == 0:
            run.status = FAILED
            run.reason = (
                f"exited 0 but summary.json says status={said!r}"
                if summary
                else f"exited 0 but wrote no summary.json in {run.run_dir}"
            )
        else:
            run.status = DIVERGED if code == EXIT_DIVERGED or said == DIVERGED else FAILED
            if said in (FAILED, DIVERGED) and said_reason:
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
        metrics = f"dev/f1={format_metric(run.summary, 'dev/f1')} dev/loss={format_metric(run.summary, 'dev/loss')}"
        why = f"  ({run.reason})" if run.status != COMPLETED and run.reason else ""
        done = len(self.walls)
        to_run = done + len(queue) + len(running)
        wall, elapsed = format_duration(run.wall_time_s), format_duration(time.monotonic() - self.t0)
        self._say(
            f"[{run.index}/{self.total}] {run.run_id} {run.status} in {wall}  {metrics}{why}"
            f" | {done}/{to_run} done, elapsed {elapsed}, ETA {self._eta(queue, running)}"
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
