"""Hub QA sets (SQuAD, SQuAD v2, KorQuAD 1.0, KLUE-MRC) → checked records.

`datasets.load_dataset(hub_path, hub_name, split=...)` does the work; this module maps the id field, keeps the five
columns, runs the same record checks as local files, and turns "no network" into one clear DataError quickly:
under HF_DATASETS_OFFLINE / HF_HUB_OFFLINE the library refuses at once, and otherwise a short TCP probe of the hub
endpoint decides whether to ask the network at all (the library's own retries take ~25 s to give up), so a machine
without network gets either the locally cached copy or the error in about a second.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator, Optional

from .errors import DataError, one_line
from .records import RecordCollector

PROBE_TIMEOUT_S = 3.0


def _hub_reachable() -> bool:
    from experiments.network import hub_url, reachable  # bounded in time, name lookup included

    return reachable(hub_url(), PROBE_TIMEOUT_S)


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


def _load_split(hub_path: str, hub_name: Optional[str], split: str):
    import datasets

    label = f"data.hub_path={hub_path!r}" + (f" data.hub_name={hub_name!r}" if hub_name else "")
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    probe_failed = not offline and not _hub_reachable()
    try:
        with _offline_mode() if probe_failed else contextlib.nullcontext():
            return datasets.load_dataset(hub_path, hub_name, split=split)
    except Exception as err:  # ConnectionError, FileNotFoundError/DatasetNotFoundError, ValueError (bad split)...
        detail = f"{type(err).__name__}: {one_line(err)[:200]}"
        if offline or probe_failed or isinstance(err, OSError):  # ConnectionError and FileNotFoundError included
            mode = "offline mode" if offline else ("hub unreachable" if probe_failed else "")
            raise DataError(
                f"{label} could not be loaded (offline or not found: {mode + '; ' if mode else ''}{detail}); "
                "on a machine without network use data.source=files data.train_file=... data.validation_file=..."
            ) from None
        raise DataError(f"{label} split {split!r} could not be loaded: {detail}") from None


def read_hub_split(
    hub_path: str, hub_name: Optional[str], split: str, *, id_field: str = "id", strict: bool = True
) -> tuple[list[dict], Counter]:
    """One split of a hub QA set → (checked records, Counter of skip reasons)."""
    ds = _load_split(hub_path, hub_name, split)
    source = f"hub {hub_path}" + (f"/{hub_name}" if hub_name else "") + f" split {split}"
    missing = [c for c in (id_field, "context", "question", "answers") if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)} (columns: {', '.join(ds.column_names)}); "
            "set data.id_field to the set's id column"
        )
    keep = [c for c in (id_field, "title", "context", "question", "answers", "is_impossible") if c in ds.column_names]
    collector = RecordCollector(source, strict)
    for index, row in enumerate(ds.select_columns(keep)):
        record = dict(row)
        record["id"] = record.pop(id_field)
        collector.add(f"record {index}", record)
    if not collector.records:
        raise DataError(f"{source}: no usable records")
    collector.summary()
    return collector.records, collector.reasons
