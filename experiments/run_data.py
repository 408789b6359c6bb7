"""A run's data, from the data config to what training and evaluation read: `build_features`.

    tokenizer → load_examples (files, hub or generated) → prepare_features (tokenise; records the tokenizer cannot
    handle are refused by name, or skipped and counted with data.strict=false) → Features (int64 tensors of
    FEATURE_COLUMNS) for train and dev, plus the dev examples' columns that post-processing and scoring read.

Training (experiments.trainer) builds its data here, and so does anything that must see exactly the features a run
saw (the training benchmark through the Trainer, the sharpness analysis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .batches import Columns, Features, columns_of, to_features
from .data import load_examples, prepare_features
from .data.features import FEATURE_COLUMNS

EXAMPLE_COLUMNS = ("id", "context", "answers")  # what evaluation reads of the dev examples


@dataclass
class RunFeatures:
    """train / dev: the tokenised windows as Features (FEATURE_COLUMNS present in the dataset; the dev Features also
    keep example_id and offset_mapping in their dataset). dev_examples: EXAMPLE_COLUMNS of the dev examples kept
    after tokenising, converted from Arrow once. stats: what `load_examples` and `prepare_features` report (used
    and skipped records, questions cut), plus train_features and dev_features."""

    train: Features
    dev: Features
    dev_examples: Columns
    stats: dict


def build_features(
    data_cfg: Any, tokenizer: Any, *, pad_to_max_length: bool | None = None, pin_memory: bool = False
) -> RunFeatures:
    """The train and dev features of `data_cfg` (the config's `data` section) tokenised by `tokenizer` (fast).

    pad_to_max_length: batch widths (experiments.batches); None takes data_cfg.pad_to_max_length. pin_memory:
    page-locked host copies (batches bound for a GPU).

    Raises DataError (a ValueError; bad or unreadable data, a record the tokenizer refuses with data.strict=true)
    or ValueError when a split has no usable examples."""
    train_ex, dev_ex, train_ds, dev_ds, stats = tokenize_splits(data_cfg, tokenizer)
    pad = data_cfg.pad_to_max_length if pad_to_max_length is None else pad_to_max_length
    batching = dict(pad_to_max_length=pad, pin_memory=pin_memory)
    dev_examples = columns_of(dev_ex, EXAMPLE_COLUMNS)
    train = to_features(train_ds, FEATURE_COLUMNS, **batching)
    dev = to_features(dev_ds, FEATURE_COLUMNS, **batching)
    stats.update(train_features=len(train), dev_features=len(dev))
    return RunFeatures(train, dev, dev_examples, stats)


def tokenize_splits(data_cfg: Any, tokenizer: Any) -> tuple[Any, Any, Any, Any, dict]:
    """(train examples, dev examples, train features, dev features, stats) as Arrow datasets: the step of
    `build_features` before any tensor exists, for callers that need only a few rows (the sharpness analysis picks
    seeded subsets, so it does not turn a whole SQuAD split into tensors). Raises as `build_features`."""
    train_ex, dev_ex, stats = load_examples(data_cfg)
    if len(train_ex) == 0 or len(dev_ex) == 0:
        raise ValueError(f"no usable examples (train {len(train_ex)}, dev {len(dev_ex)}); check data.*")
    train_ex, dev_ex, train_ds, dev_ds = prepare_features(data_cfg, tokenizer, train_ex, dev_ex, stats)
    return train_ex, dev_ex, train_ds, dev_ds, stats
