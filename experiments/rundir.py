"""The run directory: where a run's files live, what its status words and exit codes are, how its files are read
and written (docs/CONTRACTS.md lists what each file holds).

    <results_dir>/runs/<sweep or "adhoc">/<run_id>/   run_dir(cfg): config.yaml, env.json, metrics.jsonl, summary.json,
                                                      checkpoint/, error.log, wandb/
    <results_dir>/runs/<sweep>/                       sweep_dir: the runs of one sweep (+ sweep.json, logs/)
    <results_dir>/report/, report-<sweep>/            report_dir: the report of the default sweep, of any other
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import run_id

# Statuses a finished run can have; "running" is the state between __init__ and finish.
FINAL_STATUSES = ("completed", "failed", "diverged")

DONE_STATUSES = ("completed", "diverged")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3  # a signal ends a run with 128 + its number


def run_dir(cfg: DictConfig) -> Path:
    """results_dir/runs/<sweep or 'adhoc'>/<run id>/ — the run directory of the contract."""
    return Path(cfg.results_dir) / "runs" / (cfg.sweep or "adhoc") / run_id(cfg)


def sweep_dir(results_dir: str | Path, sweep: str) -> Path:
    return Path(results_dir) / "runs" / str(sweep)


def report_dir(results_dir: str | Path, sweep: str) -> Path:
    """Where `make report` writes a sweep's report: <results_dir>/report for the default sweep (ablation), else
    <results_dir>/report-<sweep>."""
    return Path(results_dir) / ("report" if sweep == "ablation" else f"report-{sweep}")


def _to_jsonable(obj: Any) -> Any:
    """json.dumps fallback: numpy and torch scalars/arrays, paths, sets and OmegaConf containers."""
    if OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def _dumps(obj: Any, *, indent: int | None = None) -> str:
    return json.dumps(obj, default=_to_jsonable, ensure_ascii=False, indent=indent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` so that `path` holds either its old content or all of the new one, never a part.

    The text goes to a temporary file in the same folder (same filesystem, so the rename is atomic), is flushed to
    disk, and replaces `path` in one os.replace. The temporary file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a run directory is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """`atomic_write_text` of `obj` as indented JSON (numpy/torch scalars become numbers)."""
    atomic_write_text(path, _dumps(obj, indent=2) + "\n")


def read_metrics(run_dir: str | os.PathLike, *, strict: bool = True) -> list[dict]:
    """The events of `run_dir/metrics.jsonl` (or of the .jsonl file given) in the order they were logged.

    A last line that is not valid JSON is a write cut short by a crash and is skipped; a bad line anywhere else means
    the file was damaged some other way, and raises ValueError naming the line — or, with strict=False (readers that
    should still see the rest of the run, like the analysis), is skipped with a warning on the "experiments" logger.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not strict and not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="strict" if strict else "replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            problem = None if isinstance(event, dict) else f"expected a JSON object, got {type(event).__name__}"
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn last write
            problem = "not a JSON object (the file is damaged)"
        if problem is None:
            events.append(event)
        elif strict:
            raise ValueError(f"{path}:{number}: {problem}")
        else:
            logging.getLogger("experiments").warning("%s:%d: %s; line skipped", path, number, problem)
    return events


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a write cut short), so that appending starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1  # 0 when the only line is torn
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
