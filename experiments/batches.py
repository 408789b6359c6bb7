"""Training and evaluation batches: tokenised features held as tensors, and the epoch's windows of micro-batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Features:
    """Tokenised windows as tensors, loaded once (the QA sets used here fit in memory)."""

    tensors: dict  # column -> LongTensor [n, seq]
    dataset: Any = None  # the datasets.Dataset (eval: example_id, offset_mapping for post-processing)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def batch(self, index, device) -> dict:
        return {k: v[index].to(device, non_blocking=True) for k, v in self.tensors.items()}


def to_features(dataset, columns) -> Features:
    import numpy as np
    import torch

    present = [c for c in columns if c in dataset.column_names]
    return Features({c: torch.from_numpy(np.asarray(dataset[c], dtype=np.int64)) for c in present}, dataset)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABELS = ("start_positions", "end_positions")


def epoch_windows(n_features: int, micro_batch_size: int, k: int, seed: int, epoch: int):
    """The epoch's shuffled micro-batches grouped into windows of k; the last window may be shorter.

    The order depends only on (seed, epoch), so a resumed run sees exactly the windows it would have seen.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_features, generator=generator)
    micro = list(torch.split(order, micro_batch_size))
    return [micro[i:i + k] for i in range(0, len(micro), k)]
