"""Training and evaluation batches: tokenised features held as tensors, and the epoch's windows of micro-batches.

Features are stored as the tokenizer wrote them, right-padded to `data.max_seq_length`, together with each feature's
real length (its attention-mask sum). A batch is cut from them in one of two ways:

- `pad_to_max_length=True` (HF run_qa's switch of the same name): every batch is max_seq_length wide, as the
  features were stored;
- `pad_to_max_length=False` (the default here): a batch is as wide as its longest feature, rounded up to a multiple
  of `PAD_MULTIPLE` (tensor-core friendly widths, and far fewer distinct shapes). Right padding means the real tokens
  of every feature are a prefix of its row, so cutting columns off the right loses nothing.

With the masked loss of `experiments.qa_loss` the two give the same losses, gradients and predictions up to float
rounding: padding positions take part in neither attention (the mask) nor the softmax over answer positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

PAD_MULTIPLE = 8


def padded_length(longest: int, max_seq_length: int, multiple: int = PAD_MULTIPLE) -> int:
    """`longest` rounded up to a multiple of `multiple`, never beyond `max_seq_length` (tokens)."""
    return min(max_seq_length, -(-int(longest) // multiple) * multiple)


@dataclass
class Features:
    """Tokenised windows as tensors, loaded once (the QA sets used here fit in memory).

    tensors: column -> int64 tensor, [n, max_seq_length] for token columns, [n] for the labels.
    lengths: [n] int64, real tokens of each feature (the rest of its row is padding).
    dataset: the datasets.Dataset the tensors came from (eval: example_id, offset_mapping for post-processing).
    """

    tensors: dict
    lengths: Tensor
    dataset: Any = None
    pad_to_max_length: bool = False
    pin_memory: bool = False  # page-locked host copies, so host-to-GPU copies can overlap compute
    _eval_columns: Any = field(default=None, repr=False, compare=False)  # eval_columns(), built on first use

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_seq_length(self) -> int:
        return int(self.tensors["input_ids"].shape[1])

    def width(self, index: Tensor) -> int:
        """Columns of the batch made of the features at `index` (see the module docstring)."""
        if self.pad_to_max_length:
            return self.max_seq_length
        return padded_length(int(self.lengths[index].max()), self.max_seq_length)

    def batch(self, index: Tensor, device: torch.device | str) -> dict[str, Tensor]:
        """The features at `index` as a dict of tensors on `device`, [b, width] and [b]."""
        width = self.width(index)
        out = {}
        for name, column in self.tensors.items():
            part = column[index, :width] if column.ndim == 2 else column[index]
            if self.pin_memory:
                part = part.pin_memory()
            out[name] = part.to(device, non_blocking=True)
        return out

    def eval_columns(self) -> Columns:
        """example_id and offset_mapping (what post-processing reads), converted from the dataset once."""
        if self._eval_columns is None:
            self._eval_columns = columns_of(self.dataset, ("example_id", "offset_mapping"))
        return self._eval_columns

    def select(self, rows: Sequence[int]) -> Features:
        """A new Features holding only `rows` (in that order)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        dataset = self.dataset.select(list(rows)) if self.dataset is not None else None
        columns = self._eval_columns.select(rows) if self._eval_columns is not None else None  # not converted again
        return Features(
            {k: v[index] for k, v in self.tensors.items()},
            self.lengths[index],
            dataset,
            self.pad_to_max_length,
            self.pin_memory,
            columns,
        )

    def eval_batches(self, batch_size: int) -> list[Tensor]:
        """Indices of all features in batches of similar length, longest first (so memory peaks in the first
        batch). The caller writes each batch's outputs back to rows `index`, so the order of results is the
        order of the features whatever the batching."""
        order = torch.argsort(self.lengths, descending=True, stable=True)
        return list(torch.split(order, batch_size))


def to_features(
    dataset, columns: Sequence[str], *, pad_to_max_length: bool = False, pin_memory: bool = False
) -> Features:
    """A tokenised datasets.Dataset (padded to max_length, as experiments.data.features writes it) → Features."""
    present = [c for c in columns if c in dataset.column_names]
    arrays = dataset.with_format("numpy", columns=present)
    tensors = {c: torch.from_numpy(np.asarray(arrays[c], dtype=np.int64)) for c in present}
    lengths = tensors["attention_mask"].sum(dim=1)
    return Features(tensors, lengths, dataset, pad_to_max_length, pin_memory)


def epoch_windows(n_features: int, micro_batch_size: int, k: int, seed: int, epoch: int) -> list[list[Tensor]]:
    """The epoch's shuffled micro-batches grouped into windows of k; the last window may be shorter.

    The order depends only on (seed, epoch), so a resumed run sees exactly the windows it would have seen.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_features, generator=generator)
    micro = list(torch.split(order, micro_batch_size))
    return [micro[i : i + k] for i in range(0, len(micro), k)]


def subset_rows(
    example_ids: Sequence[str], feature_example_ids: Sequence[str], size: int | None, seed: int
) -> tuple[list[int], list[int]]:
    """A fixed, seeded subset of `size` examples and the rows of their features.

    Returns (example rows, feature rows), both ascending. The choice depends only on (the example ids, size, seed):
    every run of a sweep, whatever its own seed, evaluates on the same examples. size None or >= the number of
    examples: all of them.
    """
    n = len(example_ids)
    if size is None or size >= n:
        chosen = list(range(n))
    else:
        generator = torch.Generator().manual_seed(int(seed))
        chosen = sorted(torch.randperm(n, generator=generator)[:size].tolist())
    wanted = {str(example_ids[i]) for i in chosen}
    rows = [i for i, ex in enumerate(feature_example_ids) if str(ex) in wanted]
    return chosen, rows


class Columns(dict):
    """Columns of a datasets.Dataset read into Python lists once: {name: list}. It has `column_names`, so
    experiments.qa_eval reads it as it reads the Dataset; an evaluation then does not convert the same Arrow columns
    (offset_mapping: features × max_seq_length pairs) to Python again each time."""

    @property
    def column_names(self) -> list[str]:
        return list(self)

    @property
    def num_rows(self) -> int:
        """Rows (len() of a dict counts its columns)."""
        return len(next(iter(self.values()))) if dict.__len__(self) else 0

    def select(self, rows: Sequence[int]) -> Columns:
        """A new Columns holding only `rows` (in that order), as datasets.Dataset.select does."""
        return Columns({name: [column[i] for i in rows] for name, column in self.items()})


def columns_of(dataset, names: Sequence[str]) -> Columns:
    """The named columns of `dataset` (those it has) as a Columns of Python lists.

    `dataset[name]` is a lazy Arrow column in datasets >= 4 (each pass over it converts again), so the columns are
    materialised here with `to_dict()`."""
    present = [name for name in names if name in dataset.column_names]
    return Columns(dataset.select_columns(present).to_dict())
