"""Hub QA sets (SQuAD, SQuAD v2, KorQuAD 1.0, KLUE-MRC) → checked records.

`datasets.load_dataset(hub_path, hub_name, split=...)` does the work; this module maps the id field, keeps the five
columns, runs the same record checks as local files, and turns "no network" into one clear DataError quickly:
under HF_DATASETS_OFFLINE / HF_HUB_OFFLINE the library refuses at once, and otherwise a short TCP probe of the hub
endpoint decides whether to ask the network at all (the library's own retries take ~25 s to give up), so a machine
without network gets either the locally cached copy or the error in about a second.

`data.hub_path` may also be a local folder of parquet or JSON files in the hub schema (the library's packaged
builders read it): useful offline. What the library actually handed over is recorded (`hub_record`) and printed at
start: offline, `datasets` serves a name from whatever its cache holds under that name (a local folder loaded once
as "squad" is then "squad"), and a relative name that is also a folder in the working directory loads that folder.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..network import hub_reachable  # bounded in time, name lookup included; once per process
from .errors import DataError, logger, one_line
from .records import RecordCollector


@contextlib.contextmanager
def _offline_mode() -> Iterator[None]:
    """Make datasets/huggingface_hub use only their local cache for the duration of one load."""
    import datasets
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


class _LibraryNotes(logging.Handler):
    """Collects the warnings `datasets` logs during one load (e.g. "Using the latest cached version...")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(one_line(record.getMessage()))


@contextlib.contextmanager
def _library_notes() -> Iterator[list[str]]:
    handler = _LibraryNotes()
    library = logging.getLogger("datasets")
    library.addHandler(handler)
    try:
        yield handler.lines
    finally:
        library.removeHandler(handler)


def _load_split(hub_path: str, hub_name: str | None, split: str, notes: list[str]):
    import datasets

    label = f"data.hub_path={hub_path!r}" + (f" data.hub_name={hub_name!r}" if hub_name else "")
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    probe_failed = not offline and not Path(hub_path).is_dir() and not hub_reachable()
    try:
        with _offline_mode() if probe_failed else contextlib.nullcontext(), _library_notes() as lines:
            ds = datasets.load_dataset(hub_path, hub_name, split=split)
        notes.extend(lines)
        if probe_failed:
            notes.append("hub unreachable: loaded in offline mode from the local cache")
        return ds
    except Exception as err:  # ConnectionError, FileNotFoundError/DatasetNotFoundError, ValueError (bad split)...
        detail = f"{type(err).__name__}: {one_line(err)[:200]}"
        if offline or probe_failed or isinstance(err, OSError):  # ConnectionError and FileNotFoundError included
            mode = "offline mode" if offline else ("hub unreachable" if probe_failed else "")
            raise DataError(
                f"{label} could not be loaded (offline or not found: {mode + '; ' if mode else ''}{detail}); "
                "on a machine without network use data.source=files data.train_file=... data.validation_file=..."
            ) from None
        raise DataError(f"{label} split {split!r} could not be loaded: {detail}") from None


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_record(ds: Any, hub_path: str, hub_name: str | None, split: str, notes: list[str]) -> dict:
    """What `load_dataset` handed over for one split, for summary.json and the start-up line.

    local_folder: the absolute path when hub_path is a folder (relative names are tried against the working
    directory first, as the library does). cache_dir: the folder of the Arrow files; for a hub download its last
    part is the hub commit (revision), for local files a hash of them. fingerprint: the library's content
    fingerprint of the split. library_notes: the warnings the library logged while loading (offline fallbacks).
    """
    files = [f.get("filename", "") for f in (getattr(ds, "cache_files", None) or [])]
    cache_dir = str(Path(files[0]).parent) if files else None
    last = Path(cache_dir).name if cache_dir else ""
    info = ds.info
    splits = {name: int(s.num_examples) for name, s in (info.splits or {}).items()} if info.splits else {}
    folder = Path(hub_path)
    return {
        "hub_path": hub_path,
        "hub_name": hub_name,
        "split": split,
        "local_folder": str(folder.resolve()) if folder.is_dir() else None,
        "builder": info.builder_name,
        "dataset_name": info.dataset_name,
        "config_name": info.config_name,
        "cache_dir": cache_dir,
        "revision": last if _COMMIT.match(last) else None,
        "fingerprint": getattr(ds, "_fingerprint", None),
        "rows": len(ds),
        "splits": splits,
        "library_notes": list(notes),
    }


def _warn_about_resolution(record: dict) -> None:
    """One line when the library did not load the named hub set itself: a cached copy offline, or a local folder."""
    label = f"data.hub_path={record['hub_path']!r}"
    if record["local_folder"] and not Path(record["hub_path"]).is_absolute():
        logger.warning(
            "%s is the local folder %s (a folder of that name in the working directory wins over the hub)",
            label,
            record["local_folder"],
        )
    elif any("cached" in line for line in record["library_notes"]):
        logger.warning(
            "%s split %s was served from the local datasets cache %s without checking the hub (offline); "
            "a different dataset loaded earlier under this name would be served the same way",
            label,
            record["split"],
            record["cache_dir"],
        )


def read_hub_split(
    hub_path: str,
    hub_name: str | None,
    split: str,
    *,
    id_field: str = "id",
    strict: bool = True,
    where: dict | None = None,
    record: dict | None = None,
) -> tuple[list[dict], Counter]:
    """One split of a hub QA set (or a local folder in the hub schema) → (checked records, Counter of skip reasons).

    id_field: the column with the question id (data.id_field). where: filled with {id: "<source>: record <n>"} if
    given. record: filled with `hub_record(...)` if given. Raises DataError (one line) when the set cannot be loaded,
    lacks a column, or (strict) on the first bad record.
    """
    notes: list[str] = []
    ds = _load_split(hub_path, hub_name, split, notes)
    info = hub_record(ds, hub_path, hub_name, split, notes)
    _warn_about_resolution(info)
    if record is not None:
        record.update(info)
    source = f"hub {hub_path}" + (f"/{hub_name}" if hub_name else "") + f" split {split}"
    missing = [c for c in (id_field, "context", "question", "answers") if c not in ds.column_names]
    if missing:
        hint = (
            f"; set data.id_field to the set's id column (data.id_field={id_field} now)" if id_field in missing else ""
        )
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)} (columns: {', '.join(ds.column_names)}){hint}"
        )
    keep = [c for c in (id_field, "title", "context", "question", "answers", "is_impossible") if c in ds.column_names]
    collector = RecordCollector(source, strict, id_field)
    for index, row in enumerate(ds.select_columns(keep)):
        collector.add(f"record {index}", dict(row))
    if not collector.records:
        if collector.skipped:
            raise collector.nothing_usable()
        raise DataError(f"{source}: no usable records")
    collector.summary()
    if where is not None:
        where.update(collector.where_of_ids())
    return collector.records, collector.reasons
