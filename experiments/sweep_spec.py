"""The sweep file and the runs it stands for: `load_sweep` reads and checks it, `expand` turns it into runs.

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
    reuse: [ablation]                   # a run another sweep completed with the same id (the same config hash) is
                                        # linked into this sweep's folder instead of trained again

A grid value may also be a mapping of several overrides that go together (`lr: [{optim.lr: 1e-4, optim.rho: 0.1}]`);
the grid key of a file or mapping axis is only its label. `match`/`exclude` keys are config keys (dotted), checked
against the run's resolved config before the `when` overrides are added, so `arm: sam_micro` matches the label the
arm file sets. One run's config = base files + the grid's files, then the overrides in this order: the sweep's
`overrides`, the grid point's, the matching `when` rules', the command line's, and `sweep=<name>`
(a `sweep=NAME` on the command line renames the sweep).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from experiments.arms import BY_NAME
from experiments.config import (
    ConfigError,
    config_hash,
    is_path_name,
    load_config,
    parse_value,
    read_yaml_text,
    run_id,
    typed_value,
)
from experiments.metrics import BEST_BY
from experiments.provenance import REPO_ROOT
from experiments.rundir import run_dir

SWEEP_KEYS = ("name", "description", "base", "grid", "overrides", "when", "exclude", "include", "reuse", "report")
# what the report of a sweep may be told (recorded in sweep.json for analysis.report)
REPORT_TARGET_METRICS = BEST_BY  # experiments.metrics' rows marked best_by
WHEN_KEYS = ("match", "overrides")
CONFIG_SUFFIXES = (".yaml", ".yml")


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
    reuse: list[str] = field(default_factory=list)  # sweeps whose completed runs of the same id are linked in


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
    if not is_path_name(name):
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
    reuse = data.get("reuse") or []
    reuse = [reuse] if isinstance(reuse, str) else reuse
    if not isinstance(reuse, list) or not all(is_path_name(item) and item != name for item in reuse):
        raise SweepError(f"sweep file {str(path)!r}: reuse must list the names of other sweeps, got {reuse!r}")
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
        reuse=list(reuse),
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
        return " ".join(f"{key}={point_label(value)}" for key, value in self.point.items())


def point_label(value: Any) -> str:
    """A grid value as the manifest and the listings show it: a config file by its stem, else key=value text."""
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


_TYPED: dict[tuple[str, str], Any] = {}


def _typed(key: str, value: Any) -> Any:
    """A match value as the config stores it for `key` ("4" → 4), or a marker that equals nothing if it cannot be.
    Memoised on (key, repr(value)): typed_value builds the whole schema each call (~0.1 s), and the answer depends on
    nothing else, while a grid asks it once per rule value per run."""
    marker = (key, repr(value))
    if marker not in _TYPED:
        try:
            _TYPED[marker] = typed_value(key, value)
        except ConfigError:
            _TYPED[marker] = _MISSING
    return _TYPED[marker]


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


def _check_rule_arms(spec: SweepSpec, labels: set[str]) -> None:
    """An exclude or when rule on `arm` must name an arm of the table or of some point of the sweep: a typo
    (sam_mirco) would match nothing and silently keep (or leave without overrides) the runs it meant.
    Raises SweepError."""
    rules = [("exclude", rule) for rule in spec.exclude] + [("when", rule) for rule, _ in spec.when]
    for kind, rule in rules:
        wanted = rule.get("arm")
        for name in wanted if isinstance(wanted, list) else [] if wanted is None else [wanted]:
            if str(name) not in labels and str(name) not in BY_NAME:
                close = difflib.get_close_matches(str(name), sorted(labels | set(BY_NAME)), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise SweepError(
                    f"sweep {spec.name}: {kind} rule {rule} names arm {name!r}, which no run of the sweep has "
                    f"({', '.join(sorted(labels))}){hint}"
                )


def expand(spec: SweepSpec, cli_overrides: Sequence[str] = ()) -> list[Run]:
    """Every run of the sweep, each with its resolved config; raises SweepError (one line) for any bad run."""
    cli = list(cli_overrides)
    runs: list[Run] = []
    seen: dict[Path, Run] = {}
    labels: set[str] = set()  # the arm of every grid and include point, before exclude drops any
    for number, (point, from_grid) in enumerate(_points(spec), start=1):
        where = f"run {number} ({' '.join(f'{k}={point_label(v)}' for k, v in point.items())})"
        files, point_overrides = _point_args(point, where)
        files = spec.base + files
        tail = [f"sweep={spec.name}"]
        try:
            cfg = load_config(files, spec.overrides + point_overrides + cli + tail)
            labels.add(cfg.arm)
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
    _check_rule_arms(spec, labels)
    if not runs:
        raise SweepError(f"sweep {spec.name}: no runs left (exclude drops every grid point)")
    roots = {Path(run.cfg.results_dir) for run in runs}
    if len(roots) > 1:
        raise SweepError(f"the runs of one sweep must share results_dir; got {', '.join(sorted(map(str, roots)))}")
    return runs
