"""glibc malloc settings for the processes that train and measure models: keep large blocks on the heap.

Every backward of the embedded MiniLM allocates a fresh dense 46.9 MB word-embedding gradient. glibc serves a block
that large from fresh mmap pages by default (its threshold adapts up to 32 MiB at most), so every backward page-faults
through 47 MB again and every zero_grad(set_to_none=True) unmaps it. Raising the mmap threshold above the block, and
the trim threshold and top pad so the freed heap is kept for the next backward, cut a SAM k = 8 window's CPU time by
12-20 % here (3 A/B pairs); the weights after 2 updates are bitwise identical with and without
(tests/test_allocator.py): the allocator decides where memory lives, not what is computed.

The values are glibc's documented tunables (mallopt(3): M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD), set with
mallopt at the start of the process. A setting given in the environment (MALLOC_MMAP_THRESHOLD_ and friends, which
glibc reads at start-up) wins and is left alone, so `MALLOC_MMAP_THRESHOLD_=131072 ...` restores glibc's behaviour
for one command; a GLIBC_TUNABLES with glibc.malloc.* settings leaves all three to the user. Off glibc (macOS, musl)
nothing is changed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

MiB = 1 << 20
# environment variable -> (mallopt parameter number from glibc's malloc.h, value in bytes)
LARGE_BLOCKS_ON_HEAP = {
    "MALLOC_MMAP_THRESHOLD_": (-3, 128 * MiB),  # M_MMAP_THRESHOLD: blocks below this come from the heap
    "MALLOC_TRIM_THRESHOLD_": (-1, 1024 * MiB),  # M_TRIM_THRESHOLD: free heap kept before it is returned
    "MALLOC_TOP_PAD_": (-2, 128 * MiB),  # M_TOP_PAD: extra heap requested per growth
}

_applied: dict[str, int] | None = None


def keep_large_blocks_on_heap() -> dict[str, int]:
    """Apply LARGE_BLOCKS_ON_HEAP with mallopt, except the settings the environment gives; once per process.

    Returns {environment variable: bytes} of what this call (or an earlier one) set; {} off glibc or when the
    environment gives every setting."""
    global _applied
    if _applied is not None:
        return dict(_applied)
    _applied = {}
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {}
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return {}  # the user tunes malloc through glibc's tunables: theirs, all of them
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # the mmap threshold first (the dict's order): setting the other two turns off glibc's adaptive threshold, which
    # is worse than the defaults if the threshold itself was refused (glibc may cap it below 128 MiB)
    for name, (param, value) in LARGE_BLOCKS_ON_HEAP.items():
        if name in os.environ:
            continue
        if libc.mallopt(param, value) != 1:  # mallopt returns 1 on success
            if name == "MALLOC_MMAP_THRESHOLD_":
                logging.getLogger(__name__).warning("glibc refused an mmap threshold of %d bytes: defaults kept", value)
                break
            continue
        _applied[name] = value
    return dict(_applied)


def malloc_settings() -> dict[str, str]:
    """The large-block settings in effect, as env.json records them: {variable: value from the environment, or
    what keep_large_blocks_on_heap set, in bytes}; a setting neither gives is glibc's default and not listed."""
    applied = dict(_applied or {})
    return {
        name: os.environ[name] if name in os.environ else str(applied[name])
        for name in LARGE_BLOCKS_ON_HEAP
        if name in os.environ or name in applied
    }
