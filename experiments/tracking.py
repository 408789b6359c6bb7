"""The run directory is the record of a run; Weights & Biases mirrors it.

Everything the analysis needs is written by this module into the run directory as plain files, so a run can be
studied (and the report rebuilt) with no W&B account and no network:

    config.yaml     the resolved config (OmegaConf YAML)
    env.json        where the run came from: git sha, dirty flag and the dirty files' names, Python and package
                    versions, device, argv, host (experiments.provenance.env_info)
    metrics.jsonl   one JSON object per `log` call, appended and flushed at once (a crash loses at most the line
                    being written; `experiments.rundir.read_metrics` skips such a torn last line)
    summary.json    status running → completed | failed | diverged, plus whatever the trainer merges in; rewritten
                    atomically (temporary file in the same folder + os.replace), so a reader never sees half a file
    wandb/          the W&B run (offline: wandb/offline-run-<time>-<id>/, uploaded later by `make sync`)

W&B gets the same metric keys, with `update` (optimizer updates) as the x-axis of every chart, the resolved config
plus the top-level keys `k` (= train.accumulation_steps) and `sweep_name` (= sweep), beside `arm`, `seed` and `sweep`,
so a dashboard filters and groups by Config keys (W&B's workspace API cannot group by the run's group field,
wandb-workspaces#35, and reads a config key `sweep` as W&B's own sweep), a group (the
sweep), a job type (the arm), tags (arm, replay, k, rho, seed, sweep) and, at the end, the final metrics in the run
summary as `final/<metric>` (e.g. final/dev/f1; analysis.dashboard's bar plots read them).

One run directory, one W&B run, each update's metrics once. W&B cannot resume an offline run (wandb#2423, #4624):
a rerun writes a second `offline-run-*` folder under the same id, and `wandb sync` of both keeps one folder's
history (wandb#3841, #5865). So every start (fresh or resumed) retires the folders already there (renamed to
`retired-offline-run-*`, which `make sync` does not upload), and a resumed run replays metrics.jsonl (the events up to
its checkpoint, after `rewind`) into its new W&B run before it logs anything new: the one folder `make sync` finds
holds updates 1..N once, however often the run was resumed. (An online run resumed under its own id is continued
on the server, which has the history already: nothing is replayed, as before.) `rebuild_wandb_run` does the same
afterwards for a run directory written before this rule (experiments.sync calls it for a directory with several
offline folders).

W&B's server refuses a run whose job_type or a tag is over 64 characters, or whose group or display name is over 128
(wandb/wandb#6402, #8322, #4208; an offline run is written anyway and then fails at `wandb sync`), so longer values
are shortened by `fit_wandb`: the first characters plus a hash of the whole text, so distinct labels stay distinct
(summary.json's "wandb" block records what W&B got; the config keeps the full labels). `tracking.mode=disabled` skips
W&B entirely and writes nothing under wandb/. A W&B start that fails is an error: an offline start needs no network,
so a failure there means the installation or the disk is broken, and the run should not go on untracked.

Floats that are NaN or infinite (a diverged loss) are written as the bare tokens NaN / Infinity, which Python's json
module (and so `read_metrics`) reads back; strict JSON parsers in other languages may not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.config import config_hash

from .config import WANDB_LIMITS
from .network import PROBE_TIMEOUT_S, reachable, wandb_url
from .provenance import env_info, utc_now
from .rundir import (
    COMPLETED,
    CONFIG_FILE,
    FAILED,
    FINAL_STATUSES,
    METRICS_FILE,
    RUNNING,
    STEP_KEYS,
    SUMMARY_FILE,
    atomic_write_json,
    atomic_write_text,
    cut_torn_tail,
    read_metrics,
    read_summary,
    to_json,
)

# How long a resumed run waits for a killed process's W&B service to let go of the run id (seconds).
WANDB_IN_USE_WAIT_S = 60.0
OFFLINE_RUN_GLOB = "offline-run-*"  # what wandb names an offline run's folder (and what `make sync` uploads)
RETIRED_PREFIX = "retired-"  # an offline folder superseded by a rebuilt one: kept for inspection, never uploaded
FINAL_PREFIX = "final/"  # the W&B summary key of a final metric: final/dev/f1, ...


class TrackingError(RuntimeError):
    """The run directory or W&B could not be set up; the message is one line."""


# ---------------------------------------------------------------------------------------------------------------------
# the tracker


def fit_wandb(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its first `limit` - 9 characters, "-" and the first 8 hex
    digits of the SHA-256 of the whole text: exactly `limit` characters, and two labels that differ only after the
    cut still differ."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 9]}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def _wandb_run_id(run_dir: Path) -> str:
    """A W&B id for a new run: the run directory's name (cut to what W&B allows) plus 8 random hex digits, so two
    runs of the same name (another sweep, another machine) never share an id in one W&B project. It is stored in
    summary.json; a resumed run reads it back there and continues the same W&B run."""
    name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", run_dir.name).strip("-.") or "run"
    return f"{name[:55]}-{secrets.token_hex(4)}"


def signal_of(err: BaseException) -> tuple[str, int | None]:
    """(name, number) of the signal behind an interrupt: SIGINT for Ctrl-C (a KeyboardInterrupt), the signal an
    exception carries in `signum` (experiments.train.Interrupted); for any other exception (its class name, None)."""

    signum = getattr(err, "signum", signal.SIGINT if isinstance(err, KeyboardInterrupt) else None)
    return (signal.Signals(signum).name, int(signum)) if signum is not None else (type(err).__name__, None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def offline_wandb_runs(run_dir: str | os.PathLike) -> list[Path]:
    """The offline W&B run folders of one run directory (run_dir/wandb/offline-run-*), oldest first (wandb names
    them offline-run-<YYYYMMDD_HHMMSS>-<id>, so the name sorts by start time)."""
    root = Path(run_dir) / "wandb"
    return sorted(p for p in root.glob(OFFLINE_RUN_GLOB) if p.is_dir()) if root.is_dir() else []


def retire_offline_runs(run_dir: str | os.PathLike) -> list[Path]:
    """Rename every run_dir/wandb/offline-run-* folder to retired-offline-run-* (so neither `make sync` nor `wandb
    sync` of the folder's runs picks it up) and return the new paths. A folder a killed process may still write to
    keeps working: a rename does not close open files."""
    retired = []
    for path in offline_wandb_runs(run_dir):
        target, n = path.with_name(RETIRED_PREFIX + path.name), 1
        while target.exists():  # wandb names a folder by the second it started: two starts can share a name
            n += 1
            target = path.with_name(f"{RETIRED_PREFIX}{n}-{path.name}")
        path.rename(target)
        retired.append(target)
    return retired


def wandb_config(cfg: DictConfig) -> dict:
    """What W&B gets as the run's config: the resolved config plus, at the top level next to arm, seed and sweep,
    `k` (train.accumulation_steps) and `sweep_name` (= sweep): the keys analysis.dashboard filters and groups by."""
    config = OmegaConf.to_container(cfg, resolve=True)
    k = OmegaConf.select(cfg, "train.accumulation_steps", default=None)
    if k is not None:
        config.setdefault("k", k)
    # the sweep again, under a name wandb-workspaces filters by as it is (it maps a config key `sweep` to the run
    # attribute Sweep, W&B's own sweeps)
    config.setdefault("sweep_name", OmegaConf.select(cfg, "sweep", default=None))
    return config


def final_summary(summary: Mapping[str, Any]) -> dict:
    """summary.json's `final` block as flat W&B summary keys: {"final/dev/f1": 71.2, ...} (numbers only)."""
    final = summary.get("final") if isinstance(summary.get("final"), Mapping) else {}
    return {
        f"{FINAL_PREFIX}{k}": v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class RunTracker:
    """Owns one run directory and its W&B mirror.

    cfg: the run's config (a DictConfig from `experiments.config.load_config`). run_dir: created if missing.
    resume: continue a run in the same directory: config.yaml is rewritten, metrics.jsonl is kept (a torn last line
    is dropped) and appended to, summary.json keeps its fields and goes back to "running", the environment of the new
    process goes to env-resume-<n>.json (env.json keeps the first start's), and W&B continues the same run id in a new
    offline folder that gets the kept history replayed first (see the module docstring; the older folders are
    retired). Without resume the tracker starts the directory afresh: metrics.jsonl is emptied, summary.json
    replaced, and earlier offline W&B folders are retired.

    Use it as a context manager, or call `finish` in a `finally` block; both are safe to combine.
    """

    def __init__(self, cfg: Any, run_dir: str | os.PathLike, *, resume: bool = False, device: Any = None):
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.structured(cfg) if not isinstance(cfg, Mapping) else OmegaConf.create(dict(cfg))
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resumed = resume
        self._finished = False
        self._wandb_run = None
        self._replay_pending = False  # a resumed run's W&B copy still lacks the kept history (see _replay)
        self._t0 = time.monotonic()
        self.mode = str(OmegaConf.select(cfg, "tracking.mode", default="disabled") or "disabled")

        atomic_write_text(self.run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        previous = self._read_summary() if resume else {}
        env = env_info(device)
        if resume and (self.run_dir / "env.json").exists():
            resumes = int(previous.get("resumes", 0)) + 1
            atomic_write_json(self.run_dir / f"env-resume-{resumes}.json", env)
        else:
            resumes = 0
            atomic_write_json(self.run_dir / "env.json", env)

        metrics_path = self.run_dir / METRICS_FILE
        if resume:
            cut_torn_tail(metrics_path)
            done = read_metrics(metrics_path) if metrics_path.exists() else []
            self._time_offset = float(done[-1].get("time", 0.0)) if done else 0.0
        else:
            metrics_path.write_text("", encoding="utf-8")
            self._time_offset = 0.0
        self._metrics = open(metrics_path, "a", encoding="utf-8")

        wandb_prev = previous.get("wandb") if isinstance(previous.get("wandb"), dict) else {}
        wandb_id = wandb_prev.get("id") if resume and wandb_prev.get("id") else _wandb_run_id(self.run_dir)
        self._summary: dict = dict(previous)
        self._summary.pop("wandb_error", None)  # from an earlier attempt
        self._summary.update(
            {
                "status": RUNNING,
                "reason": None,
                "run_id": self.run_dir.name,
                "arm": OmegaConf.select(cfg, "arm", default=None),
                "replay": OmegaConf.select(cfg, "optim.replay", default=None),
                "config_hash": self._config_hash(),
                "started_at": (previous.get("started_at") if resume else None) or env["started_at"],
                "finished_at": None,
                "resumes": resumes,
                "wandb": {"mode": self.mode, "id": wandb_id if self.mode != "disabled" else None},
            }
        )
        fields: dict = {}
        if self.mode != "disabled":
            labels = self._labels()
            fields = self.wandb_fields(labels)
            self._summary["wandb"].update({k: fields[k] for k in ("group", "job_type", "name")})
            for key, value in labels.items():
                if value is not None and fields[key] != value:
                    print(
                        f"note: W&B refuses a {key} over {WANDB_LIMITS[key]} characters; {value!r} goes to W&B "
                        f"as {fields[key]!r}",
                        file=sys.stderr,
                    )
        if resume:
            self._summary["resumed_at"] = env["started_at"]
        self._write_summary()

        if self.mode != "disabled":
            try:
                retire_offline_runs(self.run_dir)
                self._start_wandb(wandb_id, fields)
                # an online run resumed under its own id already holds the history on the server; any other new
                # W&B run (offline, an agent's new id, online after an offline attempt) gets it replayed
                agent = bool(os.environ.get("WANDB_SWEEP_ID"))
                online_before = wandb_prev.get("mode") == "online" and wandb_prev.get("id") == wandb_id
                self._replay_pending = resume and not (self.mode == "online" and online_before and not agent)
            except Exception as err:
                where = f"tracking.mode={self.mode}, dir={self.run_dir / 'wandb'}"
                message = f"W&B start failed ({where}): {_first_line(err)}"
                self._summary.update(status=FAILED, reason=message, finished_at=utc_now())
                self._write_summary()
                self._metrics.close()
                self._finished = True
                raise TrackingError(message) from err
            except BaseException as err:  # Ctrl-C or a stop signal while W&B starts: the run ends here, and says so
                name = signal_of(err)[0]
                self._summary.update(
                    status=FAILED,
                    reason=f"interrupted by {name} during start-up (starting W&B)",
                    finished_at=utc_now(),
                    interrupted={"signal": name, "update": 0, "resumable_from": None},
                )
                self._write_summary()
                self._metrics.close()
                self._finished = True
                raise

    # -- W&B -----------------------------------------------------------------------------------------------------------

    def _tags(self) -> list[str]:
        cfg = self.cfg
        pairs = [
            (None, "arm"),
            ("replay", "optim.replay"),
            ("k", "train.accumulation_steps"),
            ("rho", "optim.rho"),
            ("seed", "seed"),
            ("sweep", "sweep"),
        ]
        tags = []
        for label, key in pairs:
            value = OmegaConf.select(cfg, key, default=None)
            if value is not None:
                tags.append(str(value) if label is None else f"{label}={value}")
        tags += [str(t) for t in (OmegaConf.select(cfg, "tracking.tags", default=None) or [])]
        # W&B refuses a tag over 64 characters; keep the order, no repeats
        return list(dict.fromkeys(fit_wandb(t, WANDB_LIMITS["tag"]) for t in tags))

    def _labels(self) -> dict:
        """group (tracking.group, else the sweep), job_type (tracking.job_type, else the arm) and display name (the
        run directory's name) as the config gives them, before fitting them to W&B's limits."""

        def sel(key: str) -> str | None:
            value = OmegaConf.select(self.cfg, key, default=None)
            return None if value is None or value == "" else str(value)

        return {
            "group": sel("tracking.group") or sel("sweep"),
            "job_type": sel("tracking.job_type") or sel("arm"),
            "name": self.run_dir.name,
        }

    def wandb_fields(self, labels: dict | None = None) -> dict:
        """The group, job_type, display name and tags W&B gets, each within W&B's limits (see fit_wandb); `labels`:
        _labels() when the caller already has them."""
        labels = self._labels() if labels is None else labels
        fields = {k: None if v is None else fit_wandb(v, WANDB_LIMITS[k]) for k, v in labels.items()}
        fields["tags"] = self._tags()
        return fields

    def _start_wandb(self, wandb_id: str, fields: dict) -> None:
        """wandb.init with `fields` (wandb_fields()) as group, job_type, name and tags."""
        import wandb

        cfg = self.cfg
        if self.mode == "online":  # wandb.init retries for minutes without network: decide in seconds
            if not reachable(wandb_url()):
                raise ConnectionError(
                    f"the W&B server {wandb_url()} is not reachable within {PROBE_TIMEOUT_S:.0f} s; "
                    "use tracking.mode=offline (upload later with make sync) or set WANDB_BASE_URL"
                )

        def sel(key: str) -> Any:
            return OmegaConf.select(cfg, key, default=None)

        init = dict(
            project=sel("tracking.project") or "sam-accum",
            entity=sel("tracking.entity"),
            dir=str(self.run_dir),  # the run lands in run_dir/wandb/
            mode=self.mode,
            config=wandb_config(cfg),
            group=fields["group"],
            job_type=fields["job_type"],
            tags=fields["tags"],
            name=fields["name"],
            # under `wandb agent` the agent chooses the run id (WANDB_RUN_ID); passing ours would contradict it
            id=None if os.environ.get("WANDB_SWEEP_ID") else wandb_id,
            resume="allow" if self.resumed else None,
            settings=wandb.Settings(
                console="off",  # the trainer's stdout is its own; W&B need not capture it
                x_disable_stats=True,  # no background CPU/GPU sampling thread
                reinit="create_new",  # this tracker only uses its own run object, never the global wandb.run
            ),
        )
        deadline = time.monotonic() + WANDB_IN_USE_WAIT_S
        while True:
            try:
                run = wandb.init(**init)
                break
            except Exception as err:
                # a run resumed after kill -9: the killed process's W&B service can hold the run id until it notices
                # its parent is gone (seconds; longer on a busy machine)
                if not (self.resumed and "is in use" in str(err)) or time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
        run.define_metric("update")
        run.define_metric("*", step_metric="update")  # every chart's x-axis is the optimizer update
        self._wandb_run = run

    @property
    def wandb_run(self):
        """The W&B run object (None when tracking.mode=disabled or after finish)."""
        return self._wandb_run

    # -- files ---------------------------------------------------------------------------------------------------------

    def _config_hash(self) -> str | None:
        try:
            return config_hash(self.cfg)
        except Exception:  # a partial config in a unit test: the hash is a convenience here, not a requirement
            return None

    def _read_summary(self) -> dict:
        return read_summary(self.run_dir) or {}

    def _write_summary(self) -> None:
        atomic_write_json(self.run_dir / SUMMARY_FILE, self._summary)

    @property
    def summary(self) -> dict:
        """A copy of what summary.json holds."""
        return json.loads(to_json(self._summary))

    @property
    def finished(self) -> bool:
        return self._finished

    def elapsed(self) -> float:
        """Seconds since the run started, counting the time before a resume (up to the last logged event)."""
        return self._time_offset + (time.monotonic() - self._t0)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write run_dir/name atomically (e.g. predictions.json); returns the path."""
        path = self.run_dir / name
        atomic_write_json(path, obj)
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write run_dir/name atomically (e.g. error.log); returns the path."""
        path = self.run_dir / name
        atomic_write_text(path, text)
        return path

    # -- events --------------------------------------------------------------------------------------------------------

    def log(self, metrics: Mapping[str, Any], *, update: int, epoch: float, examples: int) -> dict:
        """Append one event to metrics.jsonl (flushed) and mirror it to W&B. Returns the event as written."""
        if self._finished:
            raise RuntimeError(f"log() after finish() on run {self.run_dir.name}")
        clash = [k for k in STEP_KEYS if k in metrics]
        if clash:
            raise ValueError(f"metric keys {clash} are step keys that log() sets itself")
        self._replay()
        event = {
            "update": int(update),
            "epoch": float(epoch),
            "examples": int(examples),
            "time": round(self.elapsed(), 3),
        }
        event.update(metrics)
        line = to_json(event)  # numpy/torch scalars become plain numbers here
        self._metrics.write(line + "\n")
        self._metrics.flush()
        event = json.loads(line)
        if self._wandb_run is not None:
            self._wandb_run.log(event)
        return event

    def _replay(self) -> None:
        """A resumed run's first W&B write: every event metrics.jsonl holds now, in order, as `log` sent it the first
        time (the same JSON values), so the new offline folder carries the whole history. Runs once."""
        if not self._replay_pending or self._wandb_run is None:
            return
        self._replay_pending = False
        for event in read_metrics(self.run_dir / METRICS_FILE):
            self._wandb_run.log(event)

    def rewind(self, update: int) -> int:
        """Keep only the events with update <= `update` (a resume from a checkpoint taken there repeats the rest).
        Returns how many events were dropped. W&B has not seen the kept history yet (it is replayed after this), so
        its copy holds each update once too."""
        if self._finished:
            raise RuntimeError(f"rewind() after finish() on run {self.run_dir.name}")
        self._metrics.close()
        path = self.run_dir / METRICS_FILE
        events = read_metrics(path)
        kept = [e for e in events if e.get("update", 0) <= update]
        atomic_write_text(path, "".join(to_json(e) + "\n" for e in kept))
        self._metrics = open(path, "a", encoding="utf-8")
        self._replay()
        return len(events) - len(kept)

    def update_summary(self, fields: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Merge fields into summary.json (top-level keys are replaced whole) and write it atomically.

        Keys with a slash cannot be keyword arguments: pass them in the mapping, e.g.
        `update_summary({"final": {"dev/f1": 71.2}}, updates=120)`."""
        merged = dict(fields or {})
        merged.update(more)
        if "status" in merged and merged["status"] not in (RUNNING, *FINAL_STATUSES):
            raise ValueError(f"status {merged['status']!r} is not one of running, {', '.join(FINAL_STATUSES)}")
        self._summary.update(json.loads(to_json(merged)))
        self._write_summary()
        if self._wandb_run is not None:
            self._wandb_run.summary.update({k: v for k, v in merged.items() if v is not None})

    def finish(self, status: str = COMPLETED, reason: str | None = None, **fields: Any) -> dict:
        """Close the run: final summary.json (status, reason, finished_at, wall_time_s unless given, fields), then the
        W&B summary and `wandb.finish` (exit code 0 for completed and diverged — the run ended as designed and
        diverging is a result — and 1 for failed).

        Idempotent (a second call returns the summary and changes nothing) and safe in a `finally` block: a failure
        while closing W&B is reported on stderr and recorded as summary["wandb_error"], never raised, so it cannot
        hide the exception that is already on its way out.
        """
        if self._finished:
            return self.summary
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status {status!r} is not one of {', '.join(FINAL_STATUSES)}")
        try:
            self._replay()  # a resumed run that ends before logging anything still uploads its history
        except Exception as err:  # noqa: BLE001 - recorded below like any W&B failure at the end
            self._summary["wandb_error"] = f"W&B replay failed: {_first_line(err)}"
        self._finished = True
        try:
            self._metrics.close()
        except OSError:
            pass
        final = {"status": status, "reason": reason, "finished_at": utc_now()}
        final.setdefault("wall_time_s", round(self.elapsed(), 3))
        final.update(fields)
        self._summary.update(json.loads(to_json(final)))
        self._write_summary()

        run, self._wandb_run = self._wandb_run, None
        if run is not None:
            try:
                skip = ("wandb",)
                run.summary.update({k: v for k, v in self._summary.items() if v is not None and k not in skip})
                run.summary.update(final_summary(self._summary))
                run.finish(exit_code=1 if status == FAILED else 0)
            except Exception as err:  # noqa: BLE001 - see the docstring
                message = f"W&B finish failed: {_first_line(err)}"
                print(f"warning: {message} (the run directory is complete)", file=sys.stderr)
                self._summary["wandb_error"] = message
                self._write_summary()
        return self.summary

    # -- context manager -----------------------------------------------------------------------------------------------

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Finish as completed, or as failed with error.log and a one-line reason when an exception leaves the block.
        An explicit earlier finish (e.g. "diverged") is kept."""
        if not self._finished:
            if exc is None:
                self.finish(COMPLETED)
            else:
                self.write_text("error.log", "".join(traceback.format_exception(exc_type, exc, tb)))
                self.finish(FAILED, reason=_first_line(exc))
        return False


def rebuild_wandb_run(run_dir: str | os.PathLike) -> Path:
    """Write the run directory's W&B mirror afresh as one offline run: the id summary.json records, the fields and
    config a RunTracker would send (from config.yaml), every metrics.jsonl event once in order, the summary.json
    fields and final/<metric> keys as the run summary; the folders there before are retired. Returns the new
    offline folder. For a run directory written before resumes replayed their history (two or more offline folders
    under one id, each with part of the updates); TrackingError when summary.json records no W&B id."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) or {}
    wandb_block = summary.get("wandb") if isinstance(summary.get("wandb"), dict) else {}
    wandb_id = wandb_block.get("id")
    if not wandb_id:
        raise TrackingError(f"{run_dir / SUMMARY_FILE} records no W&B run id; nothing to rebuild")
    # a tracker's W&B half without its run-directory half (which would rewrite the files this reads)
    mirror = object.__new__(RunTracker)
    mirror.cfg, mirror.run_dir, mirror.resumed = OmegaConf.load(run_dir / CONFIG_FILE), run_dir, True
    mirror.mode = "offline"
    fields = mirror.wandb_fields()
    retire_offline_runs(run_dir)
    mirror._start_wandb(wandb_id, fields)
    run = mirror._wandb_run
    for event in read_metrics(run_dir / METRICS_FILE):
        run.log(event)
    run.summary.update({k: v for k, v in summary.items() if v is not None and k != "wandb"})
    run.summary.update(final_summary(summary))
    run.finish(exit_code=1 if summary.get("status") == FAILED else 0)
    (folder,) = offline_wandb_runs(run_dir)
    return folder
