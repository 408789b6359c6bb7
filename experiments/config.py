"""How YAML files + `key=value` overrides become a validated config of a run.

Every key lives in experiments.schema with its default; `configs/default.yaml` repeats them all (a test keeps the
two equal) and the groups under `configs/` are small deltas. OmegaConf's structured mode rejects unknown keys and wrong
types; the range and choice checks below cover what a type cannot say. Every failure is a `ConfigError` whose
message is one line that names the key, what is allowed and where the value came from (the override as the user
typed it, or the file); the entry points turn it into exit code 2 before anything is written.

How a value is read (YAML files and `key=value` overrides alike): the text is typed by the key's type in the schema,
never by YAML 1.1's guesses. PyYAML would read `0123` as the octal number 83, `1.10` as 1.1, `on`/`yes` as true and
`1:30` as 90, so a string key would get text the user never typed. Here
- a key typed `str` / `Optional[str]` takes the text after `=` exactly as typed (`run_name=0123` is "0123",
  `tracking.mode=on` is "on"); `null` clears an optional key, and one pair of enclosing quotes is removed
  (`run_name='null'` is the text null); in a YAML file such a key takes the scalar's text (`project: 0777` is "0777");
- a `List[str]` key takes a YAML flow list whose items are text: `tracking.tags=[0123,on]` is ["0123", "on"];
- numbers and booleans are parsed only for keys typed as such, by Python's rules (`seed=0123` is 123,
  `optim.lr=3e-4`, `optim.adaptive=true|false|yes|no|on|off|1|0`), lists of them as YAML flow lists
  (`optim.betas=[0.9,0.99]`), and `null` (or `~`) is None.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.arms import ARM_OF_REPLAY, BY_NAME
from experiments.schema import (
    CHOICES,
    NONFINITE_ALLOWED,
    RANGES,
    Config,
    DataConfig,
    EvalConfig,
)


class ConfigError(ValueError):
    """A config problem, with a one-line message that names the key and what is allowed."""


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def is_path_name(name: Any) -> bool:
    """One plain folder name: letters, digits, dot, underscore, dash, and not "." or "..". The one rule of every
    value that becomes a path component (run_name, sweep, arm in the run id; the sweep CLI's sweep names), so that
    no value writes outside results_dir, nests, or writes into the sweep folder itself."""
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and all(c.isalnum() or c in "._-" for c in name)
    )


# Keys whose value is one component of a run's path (experiments.rundir.run_dir: runs/<sweep>/<run_name or arm-...>).
PATH_NAME_KEYS = ("sweep", "run_name", "arm")


def _float_keys(schema: type = Config, prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted key, is a list) of every key typed float, float | None or list[float] in the schema."""
    found = []
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        bare = _strip_optional(hint)
        if dataclasses.is_dataclass(bare):
            found += _float_keys(bare, f"{prefix}{f.name}.")
        elif bare is float:
            found.append((f"{prefix}{f.name}", False))
        elif typing.get_origin(bare) is list and typing.get_args(bare) == (float,):
            found.append((f"{prefix}{f.name}", True))
    return found


def _check_finite(cfg: DictConfig, where) -> None:
    """NaN and infinities are refused for every float key unless schema.NONFINITE_ALLOWED names it: every comparison
    with NaN is false, so a range check alone lets NaN through (and inf past a lower bound)."""
    for key, is_list in _float_keys():
        if key in NONFINITE_ALLOWED:
            continue
        value = _select(cfg, key)
        values = list(value) if is_list and value is not None else [value]
        if all(v is None or math.isfinite(v) for v in values):
            continue
        shown = values if is_list else value
        if key in RANGES:
            what = RANGES[key][2]
            must = what if any(math.isnan(v) for v in values if v is not None) else f"finite and {what}"
            raise ConfigError(f"{key}={shown!r} is out of range; it must be {must}{where(key)}")
        raise ConfigError(f"{key}={shown!r} is not allowed; it must be a finite number{where(key)}")


def _check_values(cfg: DictConfig, where=lambda *keys: "") -> None:
    """Range, choice and cross-key checks. `where(key, ...)` names the source of those keys for the message."""
    _check_finite(cfg, where)
    for key, allowed in CHOICES.items():
        value = _select(cfg, key)
        if value not in allowed:
            shown = ", ".join("null" if a is None else a for a in allowed)
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {shown}{where(key)}")
    for key, (low, high, what, inclusive) in RANGES.items():
        value = _select(cfg, key)
        if value is None:
            if "null" in what:
                continue
            raise ConfigError(f"{key} must be {what}, got null{where(key)}")
        bad_low = value < low if inclusive else value <= low
        bad_high = high is not None and (value > high or (key == "model.dropout" and value >= high))
        if bad_low or bad_high:
            raise ConfigError(f"{key}={value!r} is out of range; it must be {what}{where(key)}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas={list(cfg.optim.betas)!r} must be two numbers in [0, 1){where('optim.betas')}")
    if cfg.data.doc_stride >= cfg.data.max_seq_length // 2:
        raise ConfigError(
            f"data.doc_stride={cfg.data.doc_stride} must be < data.max_seq_length/2 "
            f"({cfg.data.max_seq_length // 2}) so windows advance{where('data.doc_stride', 'data.max_seq_length')}"
        )
    if cfg.data.source == "files":
        for key in ("data.train_file", "data.validation_file"):
            path = _select(cfg, key)
            if not path:
                raise ConfigError(f"{key} is required when data.source=files{where('data.source')}")
            if not Path(path).is_file():
                raise ConfigError(f"{key}={path!r}: no such file{where(key)}")
    elif cfg.data.source == "hub" and not cfg.data.hub_path:
        raise ConfigError(
            f"data.hub_path is required when data.source=hub (e.g. data.hub_path=squad){where('data.source')}"
        )
    second = "dev/rouge_w" if cfg.data.metric == "klue" else "dev/f1"
    if cfg.train.save_best_by in ("dev/f1", "dev/rouge_w") and cfg.train.save_best_by != second:
        raise ConfigError(
            f"train.save_best_by={cfg.train.save_best_by} is not reported with "
            f"data.metric={cfg.data.metric} (it reports dev/em and {second}); set "
            f"train.save_best_by={second}{where('train.save_best_by', 'data.metric')}"
        )
    if cfg.optim.perturbation == "per_rank" and cfg.optim.replay != "full":
        raise ConfigError(
            f"optim.perturbation=per_rank applies to optim.replay=full only (got "
            f"{cfg.optim.replay}): micro perturbs per micro-batch and rank anyway, last and none follow "
            f"their own rules; drop optim.perturbation{where('optim.perturbation', 'optim.replay')}"
        )
    if cfg.optim.replay_shortcut and not single_process(cfg):
        raise ConfigError(
            f"optim.replay_shortcut=true is for one process (dist.world_size={cfg.dist.world_size}): under "
            "data-parallel training the bug arms run their literal loop"
            f"{where('optim.replay_shortcut', 'dist.world_size')}"
        )
    if cfg.optim.replay_shortcut and cfg.optim.replay == "last" and not cfg.optim.reuse_dropout_rng:
        raise ConfigError(
            "optim.replay_shortcut=true with optim.replay=last needs optim.reuse_dropout_rng=true (one replay stands "
            f"for k only when they share dropout masks){where('optim.replay_shortcut', 'optim.reuse_dropout_rng')}"
        )
    if cfg.optim.replay == "none" and cfg.diagnostics.grad_fidelity:
        raise ConfigError(
            "diagnostics.grad_fidelity=true needs a SAM arm (optim.replay full|last|micro)"
            f"{where('diagnostics.grad_fidelity', 'optim.replay')}"
        )
    _check_wandb_fields(cfg, where)


# W&B refuses these at `wandb sync` (or at wandb.init), so an offline run would be written and then never upload.
# project: 128 characters, none of / \ # ? % : (wandb's own settings check); tags: 1 to 64 characters each
# (wandb's settings check; longer ones are also shortened in experiments.tracking, see wandb_fields).
# Server-side length limits of W&B run fields (characters); experiments.tracking shortens the others to these.
WANDB_LIMITS = {"project": 128, "job_type": 64, "tag": 64, "group": 128, "name": 128}
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"


def _check_wandb_fields(cfg: DictConfig, where) -> None:
    project, most = cfg.tracking.project, WANDB_LIMITS["project"]
    bad = sorted({c for c in project if c in WANDB_PROJECT_FORBIDDEN})
    if not project or len(project) > most or bad:
        problem = (
            "is empty"
            if not project
            else f"has {len(project)} characters (W&B allows {most})"
            if len(project) > most
            else f"contains {' '.join(bad)}, which W&B does not allow"
        )
        raise ConfigError(f"tracking.project={project!r} {problem}{where('tracking.project')}")
    for tag in cfg.tracking.tags:
        if not tag:
            raise ConfigError(f"tracking.tags has an empty tag, which W&B refuses{where('tracking.tags')}")
    for key in ("arm", "tracking.group", "tracking.job_type", "sweep", "run_name"):
        if _select(cfg, key) == "":
            raise ConfigError(f"{key} is empty; give it a name or null{where(key)}")
    for key in PATH_NAME_KEYS:
        value = _select(cfg, key)
        if value is not None and not is_path_name(value):
            raise ConfigError(
                f"{key}={value!r} becomes a folder name under results_dir: it must be one plain name of letters, "
                f"digits, . _ - (not . or ..){where(key)}"
            )


_HUB_KEYS = ("hub_path", "hub_name", "hub_train_split", "hub_validation_split")


def _changed(node: DictConfig, defaults: Any, keys: Sequence[str], prefix: str) -> list[str]:
    """`prefix.key=value` for each of `keys` whose value differs from the schema default."""
    return [
        f"{prefix}.{k}={node[k]!r}" if isinstance(node[k], str) else f"{prefix}.{k}={node[k]}"
        for k in keys
        if node[k] != getattr(defaults, k)
    ]


# The rules a local file is scored by, from the file's own markers (the official files of each set carry them):
# marker → (what it is, the data config that holds its rules, the settings of that config that decide the scoring)
FILE_SETS = {
    "korquad": (
        "KorQuAD 1.0",
        "configs/data/korquad.yaml",
        {"data.metric": "char", "data.id_field": "id", "data.version_2_with_negative": False},
    ),
    "klue": (
        "KLUE-MRC",
        "configs/data/klue_mrc.yaml",
        {
            "data.metric": "klue",
            "data.id_field": "guid",
            "data.version_2_with_negative": True,
            "train.save_best_by": "dev/rouge_w",
        },
    ),
    "squad_v2": (
        "SQuAD 2.0",
        "configs/data/squad_v2.yaml",
        {"data.metric": "squad", "data.version_2_with_negative": True},
    ),
}
_MARKERS: dict[tuple[str, int, int], tuple[str, str] | None] = {}  # (path, bytes, mtime_ns) → file_markers


def file_markers(path: str | os.PathLike) -> tuple[str, str] | None:
    """(FILE_SETS key, the marker seen) of a local QA file, or None for plain SQuAD v1.1 (or an unreadable file:
    experiments.data reports that). Markers: the "version" field "KorQuAD_v1..." (KorQuAD 1.0's files); a question
    with "guid" (KLUE-MRC's layout, with is_impossible beside it); a question with "is_impossible" (SQuAD 2.0).
    Nested SQuAD JSON, a JSON list of flat records and JSON lines are read; cached per (path, size, mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MARKERS:
        _MARKERS[key] = _read_markers(path)
    return _MARKERS[key]


def _read_markers(path: Path) -> tuple[str, str] | None:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        doc: Any = json.loads(text)
        questions: list = []
    except ValueError:  # JSON lines (or not JSON at all)
        doc, questions = None, []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                questions.append(record)
    if isinstance(doc, dict):
        version = doc.get("version")
        if isinstance(version, str) and version.startswith("KorQuAD_v1"):
            return "korquad", f"version {version!r}"
        for article in doc.get("data") or []:
            if not isinstance(article, dict):
                continue
            for paragraph in article.get("paragraphs") or [article]:
                qas = paragraph.get("qas", [paragraph]) if isinstance(paragraph, dict) else []
                questions += [q for q in qas if isinstance(q, dict)]
    elif isinstance(doc, list):
        questions = [q for q in doc if isinstance(q, dict)]
    if any("guid" in q for q in questions):
        return "klue", "questions with 'guid' and 'is_impossible'"
    if any("is_impossible" in q for q in questions):
        return "squad_v2", "questions with 'is_impossible'"
    return None


# hub sets whose official rules are not SQuAD v1.1's: (data.hub_path, data.hub_name) → FILE_SETS key
HUB_SETS = {
    ("KorQuAD/squad_kor_v1", None): "korquad",
    ("squad_kor_v1", None): "korquad",
    ("klue", "mrc"): "klue",
    ("rajpurkar/squad_v2", None): "squad_v2",
    ("squad_v2", None): "squad_v2",
}


def _apply_file_rules(cfg: DictConfig, notes: list, given: dict) -> None:
    """Local files are scored by the rules their markers name (file_markers); see _apply_set_rules."""
    found = {}
    for key in ("data.validation_file", "data.train_file"):
        marker = file_markers(_select(cfg, key)) if Path(_select(cfg, key)).is_file() else None
        if marker is not None:
            found.setdefault(marker[0], (key, marker[1]))
    if found:
        name = next(iter(found))  # the dev file's set first: it decides the scoring
        key_of_file, marker = found[name]
        _apply_set_rules(cfg, notes, given, name, f"{key_of_file}={_select(cfg, key_of_file)}", f"file ({marker})")


def _apply_set_rules(cfg: DictConfig, notes: list, given: dict, name: str, subject: str, kind: str) -> None:
    """Score `subject` (a local file, a hub set) by the official rules of FILE_SETS[name]: a key the user did not
    set takes that set's value (with a note); a key set to another value is refused, naming the data config to add,
    except data.version_2_with_negative=false (v1 training on unanswerable data: load_examples warns)."""
    what, config, settings = FILE_SETS[name]
    applied, defaults = [], OmegaConf.structured(Config)
    for key, value in settings.items():
        current = _select(cfg, key)
        if current == value:
            continue
        # a choice: an override, or a file's value other than the schema default (configs/default.yaml repeats
        # every default, configs/data/squad.yaml the SQuAD ones: neither chose rules for this file)
        if key in given and (given[key].startswith("override") or current != _select(defaults, key)):
            if key == "data.version_2_with_negative":
                continue  # v1 training on v2 data, chosen: experiments.data warns about the unanswerable questions
            raise ConfigError(
                f"{subject} is a {what} {kind} but {key}={_show(current)} (set by {given[key]}) is not its rule; "
                f"add {config} (it sets {key}={_show(value)})"
            )
        OmegaConf.update(cfg, key, value, merge=False)
        applied.append(f"{key}={_show(value).lower() if isinstance(value, bool) else _show(value)}")
    if applied:
        notes.append(
            f"data: {subject.split('=')[0]} is a {what} {kind}: scored by its rules, {', '.join(applied)} "
            f"(as {config} sets them)"
        )


def resolve_data_source(cfg: DictConfig, notes: list | None = None, set_by: dict | None = None) -> None:
    """Decide which data a run reads, write it to data.source, and refuse or explain settings that would not apply.

    - data.train_file + data.validation_file set: local files, whatever else is set. Over data.source=hub (a data
      config such as configs/data/klue_mrc.yaml) they are that set's local copy, read with its data.id_field and
      scored with its data.metric; a note says so and names the hub keys that are not read. Only one of the two
      keys, or data.source=generated beside them, is refused.
    - otherwise data.source=null means hub when data.hub_path is set, else generated.
    - the generated set with hub keys set (data.hub_path, data.hub_name, hub splits) is refused; data.generated.*
      changed while reading files or the hub, data.id_field changed on the generated set, or
      eval.null_score_diff_threshold changed without data.version_2_with_negative get a note that they are not used.
    - local files are scored by the rules their own markers name (file_markers: KorQuAD's version field, KLUE's
      guid/is_impossible, SQuAD 2.0's is_impossible): keys not in `set_by` (key → where it was set) take that set's
      values with a note; a key in `set_by` with another value is refused, naming the data config to add.
    Raises ConfigError (one line naming the key); appends one-line notes to `notes`.
    """
    d = cfg.data
    notes = notes if notes is not None else []
    defaults = DataConfig()
    given = [k for k in ("train_file", "validation_file") if d[k]]
    requested = d.source
    if given:
        if len(given) == 1:
            other = "validation_file" if given[0] == "train_file" else "train_file"
            raise ConfigError(f"data.{other} is required with data.{given[0]} (training on local files needs both)")
        if requested == "generated":
            raise ConfigError(
                "data.source=generated conflicts with data.train_file/data.validation_file: drop "
                "data.source (or set data.source=files) to train on the files, or drop the file keys"
            )
        unused = _changed(d, defaults, _HUB_KEYS, "data")
        if requested == "hub" or unused:
            over = " over data.source=hub" if requested == "hub" else ""
            notes.append(
                f"data: data.train_file/data.validation_file win{over} ({', '.join(unused) or 'no hub key'}"
                f" not read): the files are read as that set's local copy with data.id_field={d.id_field!r} "
                f"and scored with data.metric={d.metric}"
            )
        d.source = "files"
        _apply_file_rules(cfg, notes, set_by or {})
    elif requested is None:
        d.source = "hub" if d.hub_path else "generated"
    if not given and d.source == "hub" and (d.hub_path, d.hub_name) in HUB_SETS:
        name = HUB_SETS[(d.hub_path, d.hub_name)]
        _apply_set_rules(cfg, notes, set_by or {}, name, f"data.hub_path={d.hub_path}", "set on the hub")
    if d.source == "generated":
        stray = _changed(d, defaults, _HUB_KEYS, "data")
        if stray and d.hub_path is None:
            raise ConfigError(f"{stray[0]} has no effect without data.hub_path: set data.hub_path too, or drop it")
        if stray:
            raise ConfigError(
                f"{stray[0]} has no effect with data.source=generated: set data.source=hub (or leave "
                "data.source unset) to load it, or drop it"
            )
        if d.id_field != defaults.id_field:
            notes.append(f"data: data.id_field={d.id_field!r} not used: the generated set keeps its ids in 'id'")
    else:
        changed = _changed(d.generated, defaults.generated, list(d.generated.keys()), "data.generated")
        if changed:
            notes.append(
                f"data: {', '.join(changed)} not used: the data come from "
                f"{'local files' if d.source == 'files' else 'the hub'}"
            )
    if not d.version_2_with_negative and cfg.eval.null_score_diff_threshold != EvalConfig().null_score_diff_threshold:
        notes.append(
            f"data: eval.null_score_diff_threshold={cfg.eval.null_score_diff_threshold} not used: "
            'data.version_2_with_negative=false never predicts "no answer" from the null score'
        )


def _fail_from_omegaconf(err: OmegaConfBaseException, source: str) -> ConfigError:
    """Turn OmegaConf's multi-line errors into one line that names the key."""
    key = getattr(err, "full_key", None) or ""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "not in struct" in first or "Key '" in first and "not" in first:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.structured(Config)
        if parent:
            node = OmegaConf.select(node, parent)
        known = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else ""
        return ConfigError(f"unknown config key {key!r} ({source}); known keys here: {known}")
    if key:
        return ConfigError(f"{key}: {first} ({source})")
    return ConfigError(f"{first} ({source})")


# ---------------------------------------------------------------------------------------------------------------------
# reading values by the schema's types (see the module docstring)


class _TextLoader(yaml.SafeLoader):
    """YAML with every plain scalar kept as its text, except null / ~ / empty (None): structure from YAML, types
    from the schema. Quoted scalars are text as usual."""


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml_text(text: str) -> Any:
    """Parse YAML keeping plain scalars as text (None for null/~/empty); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_TextLoader)  # noqa: S506 - a SafeLoader subclass


def schema_type(key: str, schema: type = None) -> Any:
    """The type hint of dotted `key` in the dataclass `schema` (default Config), or None for an unknown key."""
    node = Config if schema is None else schema
    hint: Any = None
    for part in key.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        hint = node = hints[part]
    return hint


def _strip_optional(hint: Any) -> Any:
    """X for `X | None` (types.UnionType) or `Optional[X]` (typing.Union); any other hint unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def is_text_type(hint: Any) -> bool:
    """str or Optional[str]: a key whose value is taken as typed."""
    return _strip_optional(hint) is str


def _is_list_type(hint: Any) -> bool:
    return typing.get_origin(_strip_optional(hint)) is list


def _unquote(raw: str) -> str | None:
    """The text inside one pair of matching enclosing quotes (YAML's quoting rules), else None."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            return None
        return value if isinstance(value, str) else None
    return None


def parse_value(raw: str, hint: Any) -> Any:
    """The right-hand side of one override, read for a key of type `hint` (None: unknown key, read as for a
    non-text key). Text keys keep `raw` as typed; everything else goes through the text-keeping YAML reader and is
    converted by the schema when it is merged. Raises ConfigError for YAML that does not parse."""
    if is_text_type(hint):
        if raw == "null":
            return None
        unquoted = _unquote(raw)
        return raw if unquoted is None else unquoted
    if raw == "":
        return ""
    try:
        value = read_yaml_text(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {raw!r}: {str(err).splitlines()[0]}") from None
    if _is_list_type(hint) and value is not None and not isinstance(value, list):
        raise ConfigError(f"{raw!r} is not a list; write a list like [{raw}]")
    return value


def split_key_value(text: str) -> tuple[str, str]:
    """`key=value` → (key without surrounding spaces, the text after the first "=" exactly as typed): the one rule of
    every key=value command line here (training and sweep overrides, analysis.report, analysis.sharpness); each
    caller types the value and words its own error. Raises ValueError when there is no "=" or nothing before it."""
    if "=" not in text or text.startswith("="):
        raise ValueError(f"{text!r} is not key=value")
    key, raw = text.split("=", 1)
    return key.strip(), raw


def parse_override(text: str, schema: type = None) -> tuple[str, Any]:
    """`key=value` → (key, value), the value read by the key's type in `schema` (default Config): see the module
    docstring. Raises ConfigError (one line, quoting `text`) for a malformed override."""
    try:
        key, raw = split_key_value(text)
    except ValueError:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.rho=0.1)") from None
    try:
        return key, parse_value(raw, schema_type(key, schema))
    except ConfigError as err:
        raise ConfigError(f"{key}: {err} (override {text!r})") from None


def typed_value(key: str, value: Any) -> Any:
    """`value` (text, None, or a list of them, as parse_value or read_yaml_text give it) converted to what the
    schema stores for `key` (e.g. "4" → 4 for train.accumulation_steps). Raises ConfigError when it does not fit."""
    node = OmegaConf.structured(Config)
    OmegaConf.set_struct(node, True)
    try:
        OmegaConf.update(node, key, value, merge=False)
    except OmegaConfBaseException as err:
        raise _fail_from_omegaconf(err, f"{key}={value!r}") from None
    out = OmegaConf.select(node, key)
    return OmegaConf.to_container(out) if OmegaConf.is_config(out) else out


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _leaf_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]]


def _missing_file_hint(path: Path) -> str:
    """What a missing config file argument probably was: an override typed with spaces around '=' (the shell splits
    `optim.lr = 1e-4` into three arguments), or a file name in a folder of configs (`ARM=samfull`)."""
    if "." in path.name and "/" not in str(path) and path.suffix.lower() not in (".yaml", ".yml"):
        return " (an override is key=value, written without spaces)"
    if path.parent.is_dir() and path.suffix.lower() in (".yaml", ".yml"):
        choices = sorted(p.stem for p in path.parent.glob("*.y*ml"))
        if choices:
            return f"; {path.parent}/ has: {', '.join(choices)}"
    return ""


def load_config(
    files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (), *, notes: list | None = None
) -> DictConfig:
    """Schema defaults ← each YAML file in order ← `key=value` overrides; then resolve data.source and validate.

    Raises ConfigError (one line naming the key). `notes`, if a list, receives one line per setting that another
    setting overrides or that has no effect (e.g. hub keys while training on local files); print them."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    sources: dict[str, str] = {}  # key → where its value came from, for the error messages
    set_by_file: dict[str, str] = {}  # key → the last config file that set it
    for path in files:
        path = Path(path)
        if not path.is_file():
            if str(path).startswith("-"):
                raise ConfigError(
                    f"unknown option {str(path)!r}: the arguments are config files and key=value "
                    "overrides (--help explains them)"
                )
            raise ConfigError(f"config file {str(path)!r}: no such file{_missing_file_hint(path)}")
        try:
            data = read_yaml_text(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
        if data is None:
            continue  # an empty file (or only comments) changes nothing
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
        keys = _leaf_keys(data)
        given = OmegaConf.create(data)
        for key, raw in _raw_values(given, keys).items():  # OmegaConf's merge keeps the old value under a "???"
            if raw == "???":  # (missing): refuse it instead
                raise ConfigError(f"{key}: a value is required; '???' leaves it missing (config file {str(path)!r})")
        before = _raw_values(cfg, [k for k in keys if k in set_by_file])
        try:
            cfg = OmegaConf.merge(cfg, given)
        except OmegaConfBaseException as err:
            raise _fail_from_omegaconf(err, f"config file {str(path)!r}") from None
        after, default = _raw_values(cfg, before), _raw_values(_schema_defaults(), before)
        for key, old in before.items():
            # the later file wins (README "Configs"); say so when it replaces what an earlier file chose (an earlier
            # value equal to the schema default, e.g. from configs/default.yaml, is the base, not a choice)
            new = after[key]
            if old != new and old != default[key] and notes is not None:
                notes.append(
                    f"config: {key}={_show(new)} from {str(path)!r} replaces {key}={_show(old)} from "
                    f"{set_by_file[key]!r} (a later config file wins)"
                )
        set_by_file.update({key: str(path) for key in keys})
        sources.update({key: f"config file {str(path)!r}" for key in keys})
    for text in overrides:
        key, value = parse_override(text)
        if value == "???":
            raise ConfigError(f"{key}: a value is required; '???' leaves it missing (override {text!r})")
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as err:
            raise _fail_from_omegaconf(err, f"override {text!r}") from None
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node.keys():
            raise ConfigError(f"unknown config key {key!r} (override {text!r})")
        earlier = sources.get(key, "")
        if earlier.startswith("override") and notes is not None and earlier != f"override {text!r}":
            notes.append(f"config: override {text!r} replaces {earlier} (a later override wins)")
        sources[key] = f"override {text!r}"

    def where(*keys: str) -> str:
        found = [sources[k] for k in keys if k in sources]
        return f" ({'; '.join(dict.fromkeys(found))})" if found else ""

    _resolve_interpolations(cfg, where)
    _derive_arm(cfg, where)
    if cfg.data.source is not None and cfg.data.source not in CHOICES["data.source"]:
        raise ConfigError(
            f"data.source={cfg.data.source!r} is not allowed; choose one of: null, generated, files, hub"
            f"{where('data.source')}"
        )
    resolve_data_source(cfg, notes, sources)
    _check_values(cfg, where)
    return cfg


@functools.cache
def _schema_defaults() -> dict:
    """The schema's defaults as a plain tree (built once: OmegaConf.structured is a third of a load_config)."""
    return OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)


def _raw_values(cfg: DictConfig | dict, keys: Iterable[str]) -> dict[str, Any]:
    """{key: the value at `key` as stored} (an interpolation stays its text, "???" stays "???"; lists as Python lists;
    None where the key is not there), read from one conversion of the whole tree: converting each key's parent node
    made load_config quadratic in the number of keys (ablation_gpu's 60 runs resolved in 7.7 s, now 4.8 s)."""
    tree = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=False)
    values = {}
    for key in keys:
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = node
    return values


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def _resolve_interpolations(cfg: DictConfig, where) -> None:
    """Refuse a missing value (`???`) and resolve every OmegaConf interpolation (`${key}`, `${oc.env:VAR}`) in place,
    one line naming the key and its source for each that fails, so that the config written and hashed holds values."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for key, raw in _raw_values(tree, _leaf_keys(tree)).items():
        if raw == "???":  # OmegaConf's mark of a missing value
            raise ConfigError(f"{key}: a value is required; '???' leaves it missing{where(key)}")
        if not (isinstance(raw, str) and "${" in raw):
            continue
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except OmegaConfBaseException as err:
            cause = str(err).strip().splitlines()[0]
            if type(err).__name__ == "InterpolationKeyError":
                problem = "refers to no key"
            elif "Environment variable" in cause:
                problem = f"failed: {cause.split('resolving interpolation: ', 1)[-1].strip(chr(34))}"
            else:
                problem = f"failed: {cause}"
            raise ConfigError(f"{key}: interpolation {raw} {problem}{where(key)}") from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:  # e.g. an interpolation inside a list
        raise _fail_from_omegaconf(err, "interpolation") from None


def _derive_arm(cfg: DictConfig, where=lambda *keys: "") -> None:
    """Keep the arm label honest: derived from optim.replay; a label of the arm table (experiments.arms) must match
    the replay mode; any other label must be declared with custom_arm=true (so a typo of an arm name is refused with
    the name it is closest to instead of running full replay under the typo)."""
    expected = ARM_OF_REPLAY.get(cfg.optim.replay)
    if expected is None:
        return  # not a replay mode at all: _check_values names the allowed ones
    if cfg.arm is None:
        cfg.arm = expected
        return
    if cfg.arm in BY_NAME and cfg.arm != expected:
        given = where("arm")
        if "config file" in given:
            fix = f"drop the arm file that sets arm={cfg.arm}, or add configs/arm/{cfg.arm}.yaml last"
        else:
            fix = f"run it with configs/arm/{cfg.arm}.yaml (or optim.replay={BY_NAME[cfg.arm].replay})"
        raise ConfigError(
            f"arm={cfg.arm!r} does not match optim.replay={cfg.optim.replay!r} (that is arm {expected!r}); "
            f"{fix}{where('arm', 'optim.replay')}"
        )
    if cfg.arm not in BY_NAME and not cfg.custom_arm:
        close = difflib.get_close_matches(cfg.arm, list(BY_NAME), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""  # difflib's ratio: sam_lastt → sam_last
        raise ConfigError(
            f"arm={cfg.arm!r} is not an arm of the table ({', '.join(BY_NAME)}); {hint}to label "
            f"optim.replay={cfg.optim.replay} with your own name, add custom_arm=true{where('arm')}"
        )


def split_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """CLI arguments → (yaml files, key=value overrides)."""
    files, overrides = [], []
    for arg in argv:
        (overrides if "=" in arg else files).append(arg)
    return files, overrides


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# Keys that do not change what a run computes: they are left out of the config hash so that the same experiment
# keeps its id when it is written elsewhere, tracked differently, run with other thread counts or resumed (also
# with another checkpoint interval: resuming gives bitwise the uninterrupted run, tests/test_reliability.py).
_HASH_EXCLUDED = (
    "custom_arm",  # a declaration that `arm` is a label of one's own; the label itself stays in the hash
    "results_dir",
    "run_name",
    "sweep",
    "tracking",
    "train.num_workers",
    "train.num_threads",
    "train.checkpoint_every",
    "train.checkpoint_every_minutes",
    "dist.timeout_s",
)
# Keys that change nothing a single process computes: left out of the hash of a single-process run, so such a run
# keeps the id it had before data-parallel training existed (and sweeps still skip its completed directory).
_HASH_SINGLE_PROCESS_EXCLUDED = ("dist", "optim.perturbation")
# Keys added after runs were made: left out of the hash while they hold the value those runs had, so the runs keep
# their ids (and sweeps skip them); any other value is a different computation and enters the hash.
_HASH_EXCLUDED_AT = {"optim.replay_shortcut": False}


def single_process(cfg: DictConfig) -> bool:
    """dist.world_size is 1 or null (null means 1 unless torchrun started several processes)."""
    return (OmegaConf.select(cfg, "dist.world_size") or 1) == 1


def config_hash(cfg: DictConfig) -> str:
    data = to_dict(cfg)
    excluded = _HASH_EXCLUDED + (_HASH_SINGLE_PROCESS_EXCLUDED if single_process(cfg) else ())
    excluded += tuple(key for key, value in _HASH_EXCLUDED_AT.items() if OmegaConf.select(cfg, key) == value)
    for key in excluded:
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.get(part, {})
        node.pop(parts[-1], None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_id(cfg: DictConfig) -> str:
    """Deterministic run id: readable prefix + hash of everything that changes the computation."""
    if cfg.run_name:
        return str(cfg.run_name)
    world = "" if single_process(cfg) else f"-w{cfg.dist.world_size}"
    return f"{cfg.arm}-k{cfg.train.accumulation_steps}-s{cfg.seed}{world}-{config_hash(cfg)}"
