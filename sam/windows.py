"""Cut accumulation windows of k micro-batches from any iterable of batches (a DataLoader, an accelerate-prepared
one, a list): the unit `sam.train_step` turns into one update."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any


def windows(batches: Iterable[Any], k: int) -> Iterator[list[Any]]:
    """Consecutive lists of k batches; the last one holds the remainder (1..k batches), none is empty.

    Raises ValueError for k < 1. With an accelerate-prepared or DistributedSampler loader every rank sees the same
    number of batches, so every rank cuts the same windows (what data-parallel `train_step` needs)."""
    if k < 1:
        raise ValueError(f"a window needs k >= 1 micro-batches, got k={k}")
    iterator = iter(batches)
    while window := list(islice(iterator, k)):
        yield window
