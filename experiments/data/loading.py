"""`load_examples(cfg.data)`: the one entry from a data config to raw train/dev examples, and `prepare_features`, the
step from examples to tokenised windows that turns any record-level fault of tokenising into a named, countable
record problem. Both record what was actually used in the stats that go to summary.json."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..rundir import file_sha256
from .errors import STRICT_HINT, DataError, logger, one_line
from .features import (
    TokenisationFaults,
    count_long_questions,
    prepare_eval_features,
    prepare_train_features,
    question_token_limit,
)
from .files import read_squad_file
from .hub import read_hub_split
from .records import MAX_WARNINGS_PER_SOURCE, records_to_dataset

SPLITS = ("train", "dev")


def _file_record(path: str | Path) -> dict:
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _read(data_cfg: Any, split: str, where: dict | None = None) -> tuple[list[dict], Counter, dict]:
    """One split of the resolved source → (checked records, skip reasons, what was read)."""
    source = data_cfg.source
    strict = bool(data_cfg.strict)
    if source == "files":
        key = "train_file" if split == "train" else "validation_file"
        path = getattr(data_cfg, key)
        if not path:
            raise DataError(f"data.{key} is required when data.source=files")
        records, reasons = read_squad_file(path, strict=strict, id_field=data_cfg.id_field, where=where)
        return records, reasons, {"kind": "file", "key": f"data.{key}", **_file_record(path)}
    if source == "generated":
        # here, not at the top: `python -m experiments.data.generated` would otherwise find its own module already
        # imported through this package (runpy warns), since experiments.data imports this module
        from .generated import ensure_generated

        train_path, dev_path = ensure_generated(data_cfg.generated)
        path = train_path if split == "train" else dev_path
        records, reasons = read_squad_file(path, strict=strict, id_field="id", where=where)  # it writes "id"
        return records, reasons, {"kind": "generated", **_file_record(path)}
    if source == "hub":
        if not data_cfg.hub_path:
            raise DataError("data.hub_path is required when data.source=hub (e.g. data.hub_path=squad)")
        hub_split = data_cfg.hub_train_split if split == "train" else data_cfg.hub_validation_split
        record: dict = {}
        records, reasons = read_hub_split(
            data_cfg.hub_path,
            data_cfg.hub_name,
            hub_split,
            id_field=data_cfg.id_field,
            strict=strict,
            where=where,
            record=record,
        )
        return records, reasons, {"kind": "hub", **record}
    raise DataError(f"data.source={source!r} is not allowed; choose one of: generated, files, hub")


def load_examples(data_cfg: Any) -> tuple[Dataset, Dataset, dict]:
    """cfg.data (with data.source resolved, as `load_config` leaves it) → (train examples, dev examples, stats).

    Each Dataset has the columns id, title, context, question, answers ({"text": [...], "answer_start": [...]}; empty
    lists = unanswerable). max_train_examples / max_eval_examples keep the first N records. stats:
    {"source", "train_examples", "dev_examples", "skipped_records": {"train", "dev"}, "skip_reasons": {reason: n},
    "unanswerable": {"train", "dev"}, "used": {"train": {...}, "dev": {...}}} where "used" says what was read: a
    file (absolute path, bytes, sha256), the generated set's file, or a hub split (`hub.hub_record`).
    A v1-mode config (data.version_2_with_negative=false) fed unanswerable questions gets one warning line.
    Raises DataError (one line) for any data problem.
    """
    train_records, train_reasons, train_used = _read(data_cfg, "train")
    dev_records, dev_reasons, dev_used = _read(data_cfg, "dev")
    train = records_to_dataset(train_records, data_cfg.max_train_examples, source=_label(train_used, "train"))
    dev = records_to_dataset(dev_records, data_cfg.max_eval_examples, source=_label(dev_used, "dev"))
    reasons = train_reasons + dev_reasons
    unanswerable = {
        split: sum(1 for a in ds["answers"] if not a["text"]) for split, ds in (("train", train), ("dev", dev))
    }
    for used, ds in ((train_used, train), (dev_used, dev)):
        used["examples"] = len(ds)
    stats = {
        "source": data_cfg.source,
        "train_examples": len(train),
        "dev_examples": len(dev),
        "skipped_records": {"train": sum(train_reasons.values()), "dev": sum(dev_reasons.values())},
        "skip_reasons": dict(sorted(reasons.items())),
        "unanswerable": unanswerable,
        "used": {"train": train_used, "dev": dev_used},
    }
    if not data_cfg.version_2_with_negative and any(unanswerable.values()):
        logger.warning(
            "data: %d train / %d dev questions have no answer but data.version_2_with_negative=false: they are "
            "trained to point at [CLS] and can never be answered right at evaluation; set "
            'data.version_2_with_negative=true to predict "no answer"',
            unanswerable["train"],
            unanswerable["dev"],
        )
    return train, dev, stats


def _label(used: dict, split: str) -> str:
    if used.get("kind") == "hub":
        return (
            f"hub {used['hub_path']}"
            + (f"/{used['hub_name']}" if used.get("hub_name") else "")
            + f" split {used['split']}"
        )
    return used.get("path") or split


def describe_data(stats: dict) -> str:
    """One line naming the data a run uses, e.g. `data: files train=/d/train.json (80 examples) dev=... (20)`."""
    used = stats.get("used", {})
    parts = []
    for split in SPLITS:
        u = used.get(split, {})
        n = stats.get(f"{split}_examples")
        if u.get("kind") == "hub":
            where = u.get("local_folder") or u.get("cache_dir") or "memory"
            rev = f", revision {u['revision']}" if u.get("revision") else ""
            parts.append(
                f"{split}={u['hub_path']}"
                + (f"/{u['hub_name']}" if u.get("hub_name") else "")
                + f":{u['split']} ({n} examples; from {where}{rev}; fingerprint {u.get('fingerprint')})"
            )
        else:
            parts.append(f"{split}={u.get('path')} ({n} examples, sha256 {str(u.get('sha256'))[:12]})")
    skipped = stats.get("skipped_records", {})
    tail = (
        f"; skipped {skipped.get('train', 0)} train / {skipped.get('dev', 0)} dev records"
        if any(skipped.values())
        else ""
    )
    return f"data: {stats.get('source')} " + " ".join(parts) + tail


def locate_examples(data_cfg: Any, split: str, ids) -> dict[str, str]:
    """{id: "<file or hub split>: <line or JSON path or record n>"} for the given ids of one split, by reading the
    source again (only called when a record turns out to be faulty after loading, e.g. while tokenising)."""
    where: dict[str, str] = {}
    quiet = _Quiet()
    logger.addFilter(quiet)
    try:
        cfg = _NonStrict(data_cfg)
        _read(cfg, split, where)
    except DataError:
        pass
    finally:
        logger.removeFilter(quiet)
    return {i: where[i] for i in ids if i in where}


class _Quiet:
    """A logging filter that drops everything (the re-read in `locate_examples` has warned once already)."""

    def filter(self, record) -> bool:  # noqa: A003 - logging's name
        return False


class _NonStrict:
    """A read-only view of a data config with strict=false, so that re-reading never stops at another record."""

    def __init__(self, data_cfg: Any):
        self._cfg = data_cfg

    def __getattr__(self, name: str) -> Any:
        return False if name == "strict" else getattr(self._cfg, name)


def prepare_features(
    data_cfg: Any,
    tokenizer: Any,
    train_ex: Dataset,
    dev_ex: Dataset,
    stats: dict,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> tuple[Dataset, Dataset, Dataset, Dataset]:
    """Examples → (train examples, dev examples, train features, dev features), with record-level faults handled.

    A record that the tokenizer cannot turn into windows (a library exception, or a context with no token the
    tokenizer keeps) is, with data.strict=true, a DataError naming the file and record (line or JSON path, and id);
    with data.strict=false it is dropped from its split, counted in stats["skip_reasons"] (tokenizer_error,
    no_context_tokens) and stats["skipped_records"], and logged, and the run goes on. Questions longer than the
    window leaves room for (see `features.question_token_limit`) are cut; how many is stats["questions_cut"].
    """

    d = data_cfg
    limit = question_token_limit(tokenizer, d.max_seq_length, d.doc_stride)
    out = {}
    for split, examples, prepare in (
        ("train", train_ex, prepare_train_features),
        ("dev", dev_ex, prepare_eval_features),
    ):
        kwargs = dict(cache_dir=cache_dir, use_cache=use_cache)
        try:
            features = prepare(examples, tokenizer, d.max_seq_length, d.doc_stride, **kwargs)
        except TokenisationFaults as err:
            where = locate_examples(d, split, [f.example_id for f in err.faults])
            named = [(f, where.get(f.example_id, f"{split} examples")) for f in err.faults]
            if d.strict:
                fault, place = named[0]
                more = f" ({len(named) - 1} more such records)" if len(named) > 1 else ""
                raise DataError(
                    one_line(f"{place} (id {fault.example_id!r}): {fault.message}{more}; {STRICT_HINT}")
                ) from None
            bad = set()
            for n, (fault, place) in enumerate(named):
                bad.add(fault.example_id)
                stats["skip_reasons"][fault.reason] = stats["skip_reasons"].get(fault.reason, 0) + 1
                if n < MAX_WARNINGS_PER_SOURCE:
                    logger.warning("skipped record: %s (id %r): %s", place, fault.example_id, one_line(fault.message))
            stats["skip_reasons"] = dict(sorted(stats["skip_reasons"].items()))
            stats["skipped_records"][split] += len(bad)
            examples = examples.select([i for i, ex_id in enumerate(examples["id"]) if ex_id not in bad])
            if len(examples) == 0:
                raise DataError(
                    f"{split}: none of its examples can be tokenised (the first: {named[0][1]}: "
                    f"{one_line(named[0][0].message)})"
                ) from None
            logger.warning(
                "%s: skipped %d record(s) the tokenizer cannot handle and kept %d", split, len(bad), len(examples)
            )
            features = prepare(examples, tokenizer, d.max_seq_length, d.doc_stride, **kwargs)
            stats[f"{split}_examples"] = len(examples)
            stats.get("used", {}).get(split, {})["examples"] = len(examples)
        out[split] = (examples, features)
    cut = {split: count_long_questions(out[split][0], tokenizer, limit) for split in SPLITS}
    stats["questions_cut"] = {**cut, "limit_tokens": limit}
    if any(cut.values()):
        logger.warning(
            "data: %d train / %d dev questions are longer than %d tokens and are cut to %d, so that the "
            "context keeps more room than data.doc_stride=%d in data.max_seq_length=%d",
            cut["train"],
            cut["dev"],
            limit,
            limit,
            d.doc_stride,
            d.max_seq_length,
        )
    return out["train"][0], out["dev"][0], out["train"][1], out["dev"][1]
