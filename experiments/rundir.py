"""The run directory: where a run's files live, what its status words and exit codes are, how its files are read
and written, and what a new start does with a folder that is already there (docs/CONTRACTS.md lists what each
file holds).

    <results_dir>/runs/                                runs_root: every run (experiments.sync uploads from here)
    <results_dir>/runs/<sweep>/                        sweep_dir: the runs of one sweep, its sweep.json and logs/
    <results_dir>/runs/<sweep or "adhoc">/<run_id>/    run_dir(cfg): config.yaml, env.json, metrics.jsonl,
                                                       summary.json, checkpoint/, error.log, wandb/
    <results_dir>/report/, report-<sweep>/             report_dir: the report of the default sweep, of any other

Writers and readers of the run's files live here too, so the analysis reads a run without the W&B wrapper:
`atomic_write_text`/`atomic_write_json` (the file holds its old or all of its new content, never a part),
`read_metrics` (metrics.jsonl), `read_json`/`read_summary` (summary.json, sweep.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import config_hash, load_config, run_id
from .schema import EMBEDDED_MODEL, TINY_MODEL

log = logging.getLogger(__name__)

RUNS = "runs"  # <results_dir>/runs/
ADHOC_SWEEP = "adhoc"  # the sweep folder of a run started without sweep=NAME
DEFAULT_SWEEP = "ablation"  # its report goes to <results_dir>/report/ (committed), any other to report-<sweep>/
CONFIG_FILE, SUMMARY_FILE, METRICS_FILE = "config.yaml", "summary.json", "metrics.jsonl"
ENV_FILE = "env.json"
MANIFEST_FILE = "sweep.json"  # in the sweep folder, written by experiments.sweep
STEP_KEYS = ("update", "epoch", "examples", "time")  # on every metrics.jsonl event (docs/CONTRACTS.md)

# summary.json's status: running between the start and the end, then one of FINAL_STATUSES.
RUNNING, COMPLETED, FAILED, DIVERGED = "running", "completed", "failed", "diverged"
FINAL_STATUSES = (COMPLETED, FAILED, DIVERGED)
# A run with one of these is never started again: a diverged run is a result (the same config diverges again).
DONE_STATUSES = (COMPLETED, DIVERGED)

# Exit codes of python -m experiments.train (and of the sweep: 0 all completed, 1 any not, 2 bad input).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3
EXIT_SIGNAL_BASE = 128  # a run ended by a signal exits 128 + its number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)


def signal_exit_code(signum: int) -> int:
    """The exit code of a process ended by signal `signum`, as a shell reports it: 128 + signum."""
    return EXIT_SIGNAL_BASE + int(signum)


# ---------------------------------------------------------------------------------------------------------------------
# layout


def runs_root(results_dir: str | os.PathLike) -> Path:
    """<results_dir>/runs: the folder that holds every sweep's runs."""
    return Path(results_dir) / RUNS


def sweep_dir(results_dir: str | os.PathLike, sweep: str) -> Path:
    """<results_dir>/runs/<sweep>: the runs of one sweep (and, from the sweep runner, sweep.json and logs/)."""
    return runs_root(results_dir) / str(sweep)


def run_dir(cfg: DictConfig) -> Path:
    """results_dir/runs/<sweep or 'adhoc'>/<run id>/ — the run directory of the contract."""
    return sweep_dir(cfg.results_dir, cfg.sweep or ADHOC_SWEEP) / run_id(cfg)


def report_dir(results_dir: str | os.PathLike, sweep: str) -> Path:
    """Where `make report` writes a sweep's report: <results_dir>/report for the default sweep (ablation), else
    <results_dir>/report-<sweep>."""
    return Path(results_dir) / ("report" if sweep == DEFAULT_SWEEP else f"report-{sweep}")


# ---------------------------------------------------------------------------------------------------------------------
# files


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


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """`obj` as JSON text: numpy/torch scalars and arrays, paths, sets and OmegaConf containers become plain JSON;
    NaN and infinities are written as the bare tokens NaN / Infinity (Python's json reads them back)."""
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
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def read_metrics(run_dir: str | os.PathLike, *, strict: bool = True) -> list[dict]:
    """The events of `run_dir/metrics.jsonl` (or of the .jsonl file given) in the order they were logged.

    A last line that is not valid JSON is a write cut short by a crash and is skipped; a bad line anywhere else means
    the file was damaged some other way, and raises ValueError naming the line — or, with strict=False (readers that
    should still see the rest of the run, like the analysis), is skipped with a warning on the "experiments" logger.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
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


def cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline (a write cut short), so that appending starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1  # 0 when the only line is torn
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def read_json(path: str | os.PathLike, *, warn: bool = False) -> dict | None:
    """The JSON object in `path`; None when the file is missing, unreadable, not JSON or not an object. NaN and
    Infinity tokens are read as floats (the tracker writes them for a diverged loss). warn=True: a file that exists
    but gives None is logged as a warning (the analysis reads what may be a damaged run)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        if warn:
            log.warning("%s: cannot read (%s); treating it as missing", path, str(err).splitlines()[0])
        return None
    if not isinstance(data, dict):
        if warn:
            log.warning("%s: not a JSON object; treating it as missing", path)
        return None
    return data


def checkpoint_dir(run_dir: str | os.PathLike, which: str) -> Path:
    """<run_dir>/checkpoint/<which>: "final" and "best" (save_pretrained folders), "resume" (training state)."""
    return Path(run_dir) / "checkpoint" / which


def resume_dirs(run_dir: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(resume, resume.tmp, resume.old) of a run: the resume state, the one being written, the one it replaces
    (experiments.checkpoint writes them; a start resumes when resume or resume.old exists, see run_state)."""
    base = checkpoint_dir(run_dir, "")
    return base / "resume", base / "resume.tmp", base / "resume.old"


def read_summary(run_dir: str | os.PathLike, *, warn: bool = False) -> dict | None:
    """summary.json of a run directory as a dict; None when there is none or it cannot be read (see read_json)."""
    return read_json(Path(run_dir) / SUMMARY_FILE, warn=warn)


# ---------------------------------------------------------------------------------------------------------------------
# what a new start does with the folder: one decision for experiments.train and experiments.sweep

NEW, RESUME, RESTART, CONFLICT = "new", "resume", "restart", "conflict"
UNREADABLE_HASH = "unreadable"  # the stored hash when the folder's config.yaml does not load


# ---------------------------------------------------------------------------------------------------------------------
# the inputs a run reads: the run id hashes the config (file paths, not their content), so a rerun compares what the
# run recorded with what is on disk now, and a changed input is a conflict instead of a stale "already completed"

_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (resolved path, bytes, mtime_ns) → sha256: a sweep hashes once


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of the file's bytes, as data.used records it; cached per (path, size, mtime) in this process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def model_dir_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over (relative path, bytes, mtime_ns) of every file in a local model folder.

    Sizes and modification times, not contents: hashing the weights (0.1-1.3 GB) would cost seconds on every rerun
    and every sweep plan, while save_pretrained, a copy or an edit rewrites the files it changes (new mtime). The
    cost of the shortcut is on the safe side: a folder copied anew with the same bytes reads as changed (a refusal
    naming the folder), never the other way round."""
    folder = Path(folder)
    entries = sorted(
        (str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob("*") if f.is_file()
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def local_model_dir(cfg: DictConfig) -> Path | None:
    """The local model folder the run reads (model.name_or_path is a folder), else None (embedded, tiny, hub)."""
    name = cfg.model.name_or_path
    if name in (EMBEDDED_MODEL, TINY_MODEL) or not Path(name).is_dir():
        return None
    return Path(name)


def model_input_record(cfg: DictConfig) -> dict | None:
    """summary.json's "model_input": {"path", "fingerprint"} of a local model folder, None for any other model."""
    folder = local_model_dir(cfg)
    return None if folder is None else {"path": str(folder.resolve()), "fingerprint": model_dir_fingerprint(folder)}


def changed_input(cfg: DictConfig, summary: dict | None) -> str | None:
    """One line naming the first input whose recorded identity differs from what is on disk now, else None.

    Compared: data.train_file / data.validation_file (data.source=files) against summary.json's data.used sha256,
    and a local model folder against its recorded fingerprint (model_dir_fingerprint). Not compared: the generated
    set, whose content is a function of data.generated.* (in the config hash) and of the generator's version (in its
    cache folder's name), so nothing is read or regenerated; hub splits (their revision is recorded in data.used).
    A summary that records nothing (a run cut short before loading its data) has nothing to compare."""
    summary = summary or {}
    if cfg.data.source == "files":
        used = (summary.get("data") or {}).get("used") or {}
        for split, key in (("train", "train_file"), ("dev", "validation_file")):
            recorded = (used.get(split) or {}).get("sha256")
            path = OmegaConf.select(cfg, f"data.{key}")
            if recorded is None or not path or not Path(path).is_file():
                continue  # a missing file is load_config's error
            now = file_sha256(path)
            if now != recorded:
                return f"data.{key}={path} changed since this run read it (sha256 {recorded[:12]} then, {now[:12]} now)"
    recorded_model = (summary.get("model_input") or {}).get("fingerprint")
    folder = local_model_dir(cfg)
    if recorded_model is not None and folder is not None:
        now = model_dir_fingerprint(folder)
        if now != recorded_model:
            return (
                f"model.name_or_path={cfg.model.name_or_path} changed since this run read it (files fingerprint "
                f"{recorded_model[:12]} then, {now[:12]} now)"
            )
    return None


@dataclass(frozen=True)
class RunState:
    """What is in a run directory, and what starting `cfg` there does.

    decision: new | resume | restart | completed | diverged | conflict (see `run_state`).
    own_hash: config_hash(cfg). stored_hash: the hash the folder holds (summary.json's config_hash, else its
    config.yaml's, UNREADABLE_HASH when that does not load; None when neither is there).
    summary: summary.json as read_summary returns it (None: missing or unreadable).
    """

    decision: str
    own_hash: str
    stored_hash: str | None
    summary: dict | None
    changed_input: str | None = None  # conflict because an input changed: the line changed_input gives

    @property
    def summary_hash(self) -> str | None:
        """The config hash summary.json itself records (None without a summary or without the key)."""
        return (self.summary or {}).get("config_hash")


def _stored_config_hash(folder: Path, summary: dict | None) -> str | None:
    stored = (summary or {}).get("config_hash")
    if stored is None and (folder / CONFIG_FILE).exists():
        try:
            stored = config_hash(load_config([folder / CONFIG_FILE]))
        except Exception:  # noqa: BLE001 - any config.yaml that does not load is "another config"
            stored = UNREADABLE_HASH
    return stored


def run_state(cfg: DictConfig, folder: str | os.PathLike) -> RunState:
    """Read `folder` (the run directory of `cfg`) and decide what a start of `cfg` does there; first match wins:

    | state of the folder                                                            | decision            |
    |--------------------------------------------------------------------------------|---------------------|
    | missing, or empty                                                              | new                 |
    | the stored config hash (summary.json's, else config.yaml's) differs from cfg's | conflict            |
    | (a config.yaml that does not load counts as another config)                    |                     |
    | completed, diverged or resumable, but an input changed since (changed_input)   | conflict            |
    | summary.json says completed or diverged                                        | completed, diverged |
    | checkpoint/resume/ or checkpoint/resume.old/ exists (experiments.checkpoint)   | resume              |
    | anything else: running (killed), failed, interrupted, no summary.json          | restart             |

    experiments.train acts on the decision as it stands: conflict is refused (exit code 2), completed and diverged
    exit at once, resume loads the checkpoint (and starts over when it turns out unusable), restart starts over.
    experiments.sweep (`plan`) trusts only a summary.json that carries a hash, and leaves every other case to train:

    | RunState                                                     | sweep action (manifest status)         |
    |--------------------------------------------------------------|----------------------------------------|
    | no readable summary.json                                     | run (pending)                          |
    | conflict, and summary.json carries the other hash            | conflict (skipped): never touched      |
    | conflict: an input changed since (data file, model folder)   | conflict (skipped): never touched      |
    | completed or diverged, and summary.json carries cfg's hash   | skip (completed, diverged)             |
    | anything else                                                | rerun (pending): train resumes/decides |

    A summary.json that is not a JSON object counts as no summary (read_summary); the folder's files are only read.
    """
    folder = Path(folder)
    own = config_hash(cfg)
    if not folder.exists() or not any(folder.iterdir()):
        return RunState(NEW, own, None, None)
    summary = read_summary(folder)
    stored = _stored_config_hash(folder, summary)
    status = (summary or {}).get("status")
    resume, _, resume_old = resume_dirs(folder)
    changed = None
    if stored is not None and stored != own:
        decision = CONFLICT
    elif status in DONE_STATUSES or resume.exists() or resume_old.exists():
        changed = changed_input(cfg, summary)  # its result (or its state) came from other inputs: never reused
        if changed is not None:
            decision = CONFLICT
        elif status in DONE_STATUSES:
            decision = status  # a diverged run is a result: rerunning the same config diverges again
        else:
            decision = RESUME
    else:
        decision = RESTART
    return RunState(decision, own, stored, summary, changed)
