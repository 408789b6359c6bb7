"""Turn a sweep's run directories into pandas frames.

A sweep lives in `<results_dir>/runs/<sweep>/`: one folder per run (see docs/CONTRACTS.md for what a run directory
holds) and, when the sweep runner wrote one, a manifest `sweep.json`. This module only reads those files; it never
imports the training code (the layout and the metrics reader come from experiments.rundir, the owner of the format).

    collect_runs(results_dir, sweep)    one row per run: the flattened config, the summary, the environment
    collect_curves(results_dir, sweep)  one row per (event, metric) of every metrics.jsonl: the learning curves

Column names of `collect_runs`:

    run_id, run_dir                    the folder name and its path
    arm, seed, optim.replay, train.accumulation_steps, data.source, ...
                                       every config.yaml key, flattened with dots (lists become tuples)
    k, replay                          short aliases of train.accumulation_steps and optim.replay
    status, reason                     from summary.json; from the manifest when the run wrote no summary
    final.dev/f1, final.dev/em, final.dev/loss, final.train/loss, final.update, final.epoch
    best.metric, best.value, best.dev/f1, ...
    updates, examples, wall_time_s, mean_step_time_s, config_hash, started_at, finished_at
    data_stats.train_examples, ...     the summary's "data" block (renamed so it cannot clash with the config's data.*)
    summary.<key>                      any other summary key that would clash with a config column
    env.git.sha, env.git.dirty, env.device.name, env.device.type, env.python, env.packages.<name>, ...
    git_sha, device                    short aliases of env.git.sha and env.device.name
    literal_cost                       False for a bug arm run with optim.replay_shortcut=true (its step time is not
                                       the copied loop's); True otherwise
    has_summary, has_metrics, in_manifest

The manifest is only a fallback for what a run's own files do not say. It is read in the shape experiments.sweep
writes, {"name", ..., "runs": [{"run_id", "arm", "point", "overrides", "status", "reason", "run_dir", ...}]} with
statuses pending | running | completed | failed | diverged | skipped | interrupted; an entry without a run_id is
skipped, and a file of another shape is ignored with a warning.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from experiments.arms import ARM_ORDER
from experiments.config import ConfigError, parse_override, schema_type, split_key_value, typed_value
from experiments.metrics import METRICS
from experiments.rundir import (
    CONFIG_FILE,
    ENV_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    STEP_KEYS,
    SUMMARY_FILE,
    read_json,
    read_metrics,
    report_dir,
    sweep_dir,
)

log = logging.getLogger(__name__)

CURVE_COLUMNS = ["run_id", "arm", "replay", "k", "seed", *STEP_KEYS, "eval_kind", "metric", "value"]


class CollectError(RuntimeError):
    """The sweep cannot be read at all (no such folder); the message is one line."""


# ---------------------------------------------------------------------------------------------------------------------
# small readers


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"rho": 0.05}} → {"optim.rho": 0.05}. Lists become tuples (hashable, so they can be grouped on);
    an empty mapping stays as one key holding None."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten(value, name + "."))
            else:
                flat[name] = None
        elif isinstance(value, list):
            flat[name] = tuple(_hashable(v) for v in value)
        else:
            flat[name] = value
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        log.warning("%s: cannot read (%s); treating it as missing", path, str(err).splitlines()[0])
        return {}
    return data if isinstance(data, dict) else {}


def read_events(path: str | Path) -> list[dict]:
    """The events of a metrics.jsonl file (or run directory). A torn last line (a crash in the middle of a write) is
    skipped quietly; a bad line elsewhere is skipped with a warning, because the analysis should still see the rest
    of the run. The format's reader lives with its writer, experiments.rundir."""
    return read_metrics(path, strict=False)


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / SUMMARY_FILE).is_file() or (path / CONFIG_FILE).is_file())


def run_dirs(results_dir: str | Path, sweep: str) -> list[Path]:
    """The run directories of a sweep (folders that hold a summary.json or a config.yaml), sorted by name."""
    root = sweep_dir(results_dir, sweep)
    if not root.is_dir():
        raise CollectError(f"no sweep folder {str(root)!r} (expected <results_dir>/runs/<sweep>/)")
    return sorted((p for p in root.iterdir() if _is_run_dir(p)), key=lambda p: p.name)


# ---------------------------------------------------------------------------------------------------------------------
# the manifest


def _parse_overrides(overrides: Any) -> dict[str, Any]:
    """The sweep's "key=value" override strings of one run, typed as the run read them."""
    parsed: dict[str, Any] = {}
    if isinstance(overrides, list):
        for text in overrides:
            try:
                key, raw = split_key_value(text)
            except (ValueError, TypeError):  # not key=value text: nothing to read
                continue
            try:  # as the run read it: typed by the config schema (run_name=0123 stays "0123")
                value = parse_override(text)[1]
                value = typed_value(key, value) if schema_type(key) is not None else value
            except ConfigError:
                value = raw
            parsed[key] = _hashable(value)
    return parsed


def read_manifest(results_dir: str | Path, sweep: str) -> dict[str, dict]:
    """{run_id: flattened entry} from `<sweep>/sweep.json`; {} when there is none (see the module docstring)."""
    path = sweep_dir(results_dir, sweep) / MANIFEST_FILE
    data = read_json(path, warn=True)
    if data is None:
        return {}
    if not isinstance(data.get("runs"), list):
        log.warning("%s: not the object with a 'runs' list that experiments.sweep writes; ignored", path)
        return {}
    manifest: dict[str, dict] = {}
    for entry in data["runs"]:
        run_id = entry.get("run_id") if isinstance(entry, Mapping) else None
        if not run_id:
            continue
        flat = _parse_overrides(entry.get("overrides"))
        if isinstance(entry.get("point"), Mapping):  # the grid point, as experiments.sweep records it
            for key, value in flatten(entry["point"]).items():
                flat.setdefault(key, value)
        for key in ("arm", "status", "reason", "run_dir"):
            if entry.get(key) is not None:
                flat[key] = entry[key]
        manifest[str(run_id)] = flat
    return manifest


# ---------------------------------------------------------------------------------------------------------------------
# runs


def _summary_columns(summary: Mapping[str, Any], config_cols: set[str]) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for key, value in summary.items():
        if key == "data" and isinstance(value, Mapping):
            cols.update(flatten(value, "data_stats."))
        elif isinstance(value, Mapping):
            cols.update(flatten(value, f"{key}."))
        else:
            cols[key] = _hashable(value)
    # a summary key that names a config column (arm, seed, ...) keeps the config's value; its own goes to summary.*
    for key in list(cols):
        if key in config_cols and key not in ("run_id",):
            cols[f"summary.{key}"] = cols.pop(key)
    return cols


def _env_columns(env: Mapping[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in env.items() if k != "argv"}
    cols = flatten(env, "env.")
    return cols


def _run_row(path: Path, manifest_entry: Mapping[str, Any] | None) -> dict[str, Any]:
    config = flatten(_read_yaml(path / CONFIG_FILE))
    summary = read_json(path / SUMMARY_FILE, warn=True)
    env = read_json(path / ENV_FILE, warn=True)
    row: dict[str, Any] = {"run_id": path.name, "run_dir": str(path)}
    if manifest_entry:  # the manifest fills in only what the run's own files do not say
        row.update({k: v for k, v in manifest_entry.items() if k not in ("status", "reason", "run_dir")})
    row.update(config)
    row["has_summary"] = isinstance(summary, Mapping)
    row["has_metrics"] = (path / METRICS_FILE).is_file()
    row["in_manifest"] = manifest_entry is not None
    if isinstance(summary, Mapping):
        row.update(_summary_columns(summary, set(config)))
        row["run_id"] = path.name  # the folder is the id the curves use, whatever the summary says
    if isinstance(env, Mapping):
        row.update(_env_columns(env))
    status = row.get("status")
    m_status = (manifest_entry or {}).get("status")
    if not row["has_summary"]:
        row["status"] = m_status or "unknown"
        row["reason"] = (manifest_entry or {}).get("reason") or "no summary.json in the run directory"
    elif status == "running" and m_status and m_status not in ("running", "pending", "completed"):
        # the process died without finishing its summary (failed, diverged, interrupted); the sweep runner saw it end
        row["status"] = m_status
        row["reason"] = (manifest_entry or {}).get("reason") or row.get("reason") or "stopped while running"
    return row


def _manifest_only_row(run_id: str, entry: Mapping[str, Any], root: Path) -> dict[str, Any]:
    row: dict[str, Any] = {k: v for k, v in entry.items() if k != "run_dir"}
    row.update(run_id=run_id, run_dir=str(root / run_id), has_summary=False, has_metrics=False, in_manifest=True)
    row["status"] = entry.get("status") or "unknown"
    row["reason"] = entry.get("reason") or "listed in sweep.json but no run directory was written"
    return row


def _arm_sort_key(arm: Any) -> tuple[int, str]:
    arm = "" if arm is None or (isinstance(arm, float) and math.isnan(arm)) else str(arm)
    return (ARM_ORDER.index(arm), arm) if arm in ARM_ORDER else (len(ARM_ORDER), arm)


def arm_order(arms: Iterable[Any]) -> list[str]:
    """The distinct arms in report order: adamw, sam_full, sam_last, sam_micro, then the rest alphabetically."""
    seen = {str(a) for a in arms if a is not None and not (isinstance(a, float) and math.isnan(a))}
    return sorted(seen, key=_arm_sort_key)


def _add_aliases(df: pd.DataFrame) -> pd.DataFrame:
    aliases = {
        "k": "train.accumulation_steps",
        "replay": "optim.replay",
        "git_sha": "env.git.sha",
        "device": "env.device.name",
    }
    for alias, column in aliases.items():
        if column in df.columns:
            df[alias] = df[column]
        elif alias not in df.columns:
            df[alias] = None
    for column in ("arm", "seed", "status", "reason"):
        if column not in df.columns:
            df[column] = None
    shortcut = df["optim.replay_shortcut"].eq(True) if "optim.replay_shortcut" in df.columns else False
    df["literal_cost"] = ~(shortcut & df["replay"].isin(["last", "last_only"]))
    return df


def _sort_runs(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    keys = pd.DataFrame(
        {
            "arm": [_arm_sort_key(a)[0] for a in df["arm"]],
            "arm_name": [_arm_sort_key(a)[1] for a in df["arm"]],
            "k": pd.to_numeric(df["k"], errors="coerce").fillna(-1),
            "seed": pd.to_numeric(df["seed"], errors="coerce").fillna(-1),
            "run_id": df["run_id"].astype(str),
        },
        index=df.index,
    )
    order = keys.sort_values(["arm", "arm_name", "k", "seed", "run_id"], kind="mergesort").index
    return df.loc[order].reset_index(drop=True)


def collect_runs(results_dir: str | Path, sweep: str) -> pd.DataFrame:
    """One row per run of `<results_dir>/runs/<sweep>/` (see the module docstring for the columns), sorted by arm, k,
    seed. Runs the manifest lists but that left no directory are rows too, with the manifest's status and reason,
    so that nothing that was meant to run disappears from the tables. Raises CollectError if the folder is missing."""
    root = sweep_dir(results_dir, sweep)
    dirs = run_dirs(results_dir, sweep)
    manifest = read_manifest(results_dir, sweep)
    rows = [_run_row(p, manifest.get(p.name)) for p in dirs]
    present = {p.name for p in dirs}
    rows += [_manifest_only_row(rid, entry, root) for rid, entry in manifest.items() if rid not in present]
    df = pd.DataFrame(rows)
    df = _add_aliases(df)
    for column in ("k", "seed"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    numeric = [c for c in df.columns if c.startswith(("final.", "best.")) and c != "best.metric"]
    numeric += [c for c in ("updates", "examples", "wall_time_s", "mean_step_time_s") if c in df.columns]
    for column in numeric:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    return _sort_runs(df)


# ---------------------------------------------------------------------------------------------------------------------
# curves


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def collect_curves(results_dir: str | Path, sweep: str, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The long frame of every numeric metric of every event in the sweep's metrics.jsonl files.

    Columns: run_id, arm, replay, k, seed (from the run's config), update, epoch, examples, time (the event's step
    keys), eval_kind (the event's "eval/kind": epoch | final | periodic, or None for train/diag events), metric,
    value. A torn last line is skipped. `runs` (the frame of `collect_runs`) saves reading the configs again."""
    if runs is None:
        runs = collect_runs(results_dir, sweep)
    records: list[tuple] = []
    wanted = ["run_id", "run_dir", "arm", "replay", "k", "seed"]
    for run in runs.reindex(columns=wanted).to_dict("records"):
        path = Path(run["run_dir"]) / METRICS_FILE
        if not path.is_file():
            continue
        ident = (run["run_id"], run.get("arm"), run.get("replay"), run.get("k"), run.get("seed"))
        for event in read_events(path):
            steps = tuple(event.get(key) for key in STEP_KEYS)
            kind = event.get("eval/kind")
            for metric, value in event.items():
                if metric in STEP_KEYS or not _is_number(value):
                    continue
                records.append((*ident, *steps, kind, metric, float(value)))
    return _curve_dtypes(pd.DataFrame.from_records(records, columns=CURVE_COLUMNS))


def _curve_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """The column types of a curves frame (nullable integers for counts), whether collected or read from a CSV."""
    for column in ("k", "seed", "update", "examples"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype("Int64")
    for column in ("epoch", "time", "value"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    return df


# ---------------------------------------------------------------------------------------------------------------------
# the frames without the raw runs: the committed report's CSVs

# the metrics the report keeps in curves.csv: enough for every figure and table of the report and the notebook
REPORT_CURVE_METRICS = tuple(m.key for m in METRICS if m.curve)  # experiments.metrics' rows marked curve


def load_frames(results_dir: str | Path, sweep: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(runs, curves, where they came from) of a sweep: from its run directories when they are there, else from the
    report's runs.csv and curves.csv in report_dir(results_dir, sweep) (a fresh clone has the committed report but
    no raw runs). Raises CollectError when neither exists."""
    if sweep_dir(results_dir, sweep).is_dir():
        runs = collect_runs(results_dir, sweep)
        return runs, collect_curves(results_dir, sweep, runs), f"run directories in {sweep_dir(results_dir, sweep)}"
    folder = report_dir(results_dir, sweep)
    runs_csv, curves_csv = folder / "runs.csv", folder / "curves.csv"
    if not (runs_csv.is_file() and curves_csv.is_file()):
        raise CollectError(
            f"neither the sweep folder {str(sweep_dir(results_dir, sweep))!r} nor the report CSVs "
            f"{str(runs_csv)!r} and {str(curves_csv)!r} exist"
        )
    runs = pd.read_csv(runs_csv)
    for column in ("k", "seed", "update", "examples"):  # as before: the counts as nullable integers
        if column in runs.columns:
            runs[column] = pd.to_numeric(runs[column], errors="coerce").astype("Int64")
    curves = _curve_dtypes(pd.read_csv(curves_csv))
    curves["eval_kind"] = curves["eval_kind"].astype(object).where(curves["eval_kind"].notna(), None)
    return runs, curves, f"the report's CSVs in {folder} (no run directories here)"
