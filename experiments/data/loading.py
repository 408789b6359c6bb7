"""`load_examples(cfg.data)`: the one entry from a data config to raw train/dev examples."""
from __future__ import annotations

from collections import Counter
from typing import Any

from datasets import Dataset

from .errors import DataError
from .files import read_squad_file
from .records import records_to_dataset


def _read(data_cfg: Any, split: str) -> tuple[list[dict], Counter]:
    source = data_cfg.source
    strict = bool(data_cfg.strict)
    if source == "files":
        key = "train_file" if split == "train" else "validation_file"
        path = getattr(data_cfg, key)
        if not path:
            raise DataError(f"data.{key} is required when data.source=files")
        return read_squad_file(path, strict=strict)
    if source == "generated":
        from .generated import ensure_generated

        train_path, dev_path = ensure_generated(data_cfg.generated)
        return read_squad_file(train_path if split == "train" else dev_path, strict=strict)
    if source == "hub":
        from .hub import read_hub_split

        if not data_cfg.hub_path:
            raise DataError("data.hub_path is required when data.source=hub (e.g. data.hub_path=squad)")
        hub_split = data_cfg.hub_train_split if split == "train" else data_cfg.hub_validation_split
        return read_hub_split(
            data_cfg.hub_path, data_cfg.hub_name, hub_split, id_field=data_cfg.id_field, strict=strict
        )
    raise DataError(f"data.source={source!r} is not allowed; choose one of: generated, files, hub")


def load_examples(data_cfg: Any) -> tuple[Dataset, Dataset, dict]:
    """cfg.data → (train examples, dev examples, stats).

    Each Dataset has the columns id, title, context, question, answers ({"text": [...], "answer_start": [...]}; empty
    lists = unanswerable). max_train_examples / max_eval_examples keep the first N records. stats:
    {"train_examples", "dev_examples", "skipped_records": {"train", "dev"}, "skip_reasons": {reason: count}}.
    """
    train_records, train_reasons = _read(data_cfg, "train")
    dev_records, dev_reasons = _read(data_cfg, "dev")
    train = records_to_dataset(train_records, data_cfg.max_train_examples)
    dev = records_to_dataset(dev_records, data_cfg.max_eval_examples)
    reasons = train_reasons + dev_reasons
    stats = {
        "train_examples": len(train),
        "dev_examples": len(dev),
        "skipped_records": {"train": sum(train_reasons.values()), "dev": sum(dev_reasons.values())},
        "skip_reasons": dict(sorted(reasons.items())),
    }
    return train, dev, stats
