"""One run over several processes: torchrun starts them, torch.distributed connects them, DDP keeps them in step.

    torchrun --standalone --nproc_per_node=N -m experiments.train CONFIG.yaml ... key=value
    make run NPROC=N ARGS="..."                     # the same through the Makefile

A process that torchrun started (RANK, WORLD_SIZE and LOCAL_RANK in its environment) joins the process group:
nccl on CUDA (rank r on device cuda:LOCAL_RANK), gloo on the CPU. `dist.world_size` (null: as torchrun started the
run) is written into the config, so the run id tells a 2-process run from a 1-process one. With W ranks:

- data: the global order is the single-process order for micro-batch W × train.micro_batch_size (`epoch_windows`);
  rank r takes its `torch.tensor_split` slice of each global micro-batch (`rank_slice`). A slice that comes out empty
  (a last micro-batch with fewer rows than ranks) is a placeholder row with weight 0, so every rank runs the same
  passes. A DDP run thus sees in every window the examples of the single-process run with a W-times larger
  micro-batch.
- SAM: `sam.train_step(ddp=...)` with optim.perturbation global|per_rank; the formulas and all-reduce counts are in
  sam/README.md.
- dropout: after the model is built, each rank seeds its generators from (seed, rank) (`rank_seed`); the second
  pass of a micro-batch reuses its first pass's masks as in a single process.
- evaluation: the length-sorted evaluation batches are dealt round-robin (`shard`); rank 0 gathers every batch's
  logits and loss sum. A feature sits in exactly one batch, so nothing is counted twice (the padded last shard of a
  DistributedSampler, HF transformers PR #16865, is the classic source of duplicates) and EM/F1 are computed from the
  same logits a single process computes.
- files: rank 0 alone writes the run directory, W&B and checkpoints (`NullTracker` elsewhere); the resume checkpoint
  holds every rank's RNG state.
- failures: every collective fails after dist.timeout_s instead of waiting for a dead or stuck rank; torchrun stops
  the other ranks (SIGTERM, SIGKILL 30 s later) when one exits non-zero, and rank 0 records `failed`.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from experiments.rundir import COMPLETED

from .config import ConfigError
from .device import pick_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_environment(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process, else None.

    Raises ConfigError (one line) when only some of RANK, WORLD_SIZE, LOCAL_RANK are set or they are not
    0 <= rank < world size, 0 <= local rank."""
    present = [key for key in TORCHRUN_VARIABLES if key in environ]
    if not present:
        return None
    if len(present) < len(TORCHRUN_VARIABLES):
        missing = ", ".join(key for key in TORCHRUN_VARIABLES if key not in environ)
        raise ConfigError(
            f"{', '.join(present)} set but {missing} not: start data-parallel runs with torchrun "
            f"(torchrun --standalone --nproc_per_node=N -m experiments.train ...)"
        )
    try:
        rank, world, local = (int(environ[key]) for key in TORCHRUN_VARIABLES)
    except ValueError:
        shown = ", ".join(f"{key}={environ[key]!r}" for key in TORCHRUN_VARIABLES)
        raise ConfigError(f"torchrun environment is not numeric: {shown}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun environment out of range: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def resolve_world_size(cfg, environ: Mapping[str, str] = os.environ) -> tuple[int, int, int] | None:
    """Write the number of processes into cfg.dist.world_size (null: torchrun's WORLD_SIZE, 1 without torchrun).

    Returns torchrun_environment(environ). Raises ConfigError when dist.world_size was set to another number than
    the processes that were started."""
    env = torchrun_environment(environ)
    started = env[1] if env is not None else 1
    wanted = cfg.dist.world_size
    if wanted is not None and wanted != started:
        how = (
            f"torchrun started WORLD_SIZE={started}" if env is not None else "this process was not started by torchrun"
        )
        raise ConfigError(
            f"dist.world_size={wanted} but {how}; run torchrun --standalone --nproc_per_node={wanted} "
            f"-m experiments.train ... (or drop dist.world_size)"
        )
    cfg.dist.world_size = started
    return env


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s generators in a run with seed `seed`: distinct per rank, reproducible, independent
    streams (numpy's SeedSequence, the standard way to spawn them from one seed), in [0, 2**32) as numpy needs."""

    return int(np.random.SeedSequence([seed % 2**64, rank]).generate_state(1)[0])


def rank_slice(index: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s rows of one global micro-batch (feature indices): `torch.tensor_split` into `world_size` nearly
    equal consecutive parts (sizes differ by at most one, the first parts larger). Empty when len(index) < world_size
    and rank >= len(index)."""
    return torch.tensor_split(index, world_size)[rank]


def shard(batches: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s share of a list of evaluation batches: every world_size-th, starting at `rank` (round-robin, so
    the longest batches of a length-sorted list are spread over the ranks)."""
    return batches[rank::world_size]


def count_allreduces(ddp) -> list[int]:
    """Register a communication hook on `ddp` (a DistributedDataParallel) that all-reduces as DDP's default does and
    appends 1 to the returned list per call: one call per gradient bucket per synchronised backward, so
    len(list) / buckets = gradient all-reduces (clear the list between the windows you count)."""

    calls: list[int] = []

    def counting_hook(state, bucket):
        calls.append(1)
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    return calls


@dataclass
class Dist:
    """Where this process stands in the run. The default is one process with no process group."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None  # gloo | nccl when a process group was joined
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        """A process group was joined (torchrun started this process, possibly as its only rank)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """The rank that writes: logs, W&B, summary.json, checkpoints."""
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend, "rank_device": str(self.device)}

    # -- collectives (no-ops with one process) -----------------------------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0; None elsewhere."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group. Callers drop their DistributedDataParallel first: a DDP module freed after
        destroy_process_group frees the gloo group from its Reducer's destructor, which joins gloo's worker threads
        while holding the GIL; a worker still releasing a finished all-reduce's tensors waits for the GIL, and the
        process hangs at exit (seen here about 1 run in 7 of the DDP example; pytorch/pytorch#56297, #190489)."""
        if self.enabled and torch.distributed.is_initialized():
            gc.collect()  # a DDP module kept only by a reference cycle (the Trainer's) goes now, while the group lives
            torch.distributed.destroy_process_group()


def setup(cfg) -> Dist:
    """Resolve dist.world_size and, under torchrun, join the process group (timeout dist.timeout_s).

    Raises ConfigError (bad torchrun environment, dist.world_size mismatch) or ValueError (no CUDA device for this
    local rank), both before anything is written."""
    env = resolve_world_size(cfg)
    if env is None:
        return Dist()
    rank, world, local = env
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but {torch.cuda.device_count()} CUDA device(s) visible: start at "
                f"most that many processes per node, or set train.device=cpu"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=cfg.dist.timeout_s)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    torch.distributed.init_process_group(backend, timeout=timeout, **kwargs)
    # SIGTERM (torchrun stops every rank when one fails) ends a rank like Ctrl-C: experiments.train's
    # stop_signals_raise, the same as for a single process
    return Dist(rank=rank, world_size=world, backend=backend, device=device)  # LOCAL_RANK lives on in `device`


class NullTracker:
    """What ranks other than 0 get instead of a RunTracker: the same calls, nothing written to the run directory.

    error.log (the traceback of a failure on this rank) goes to stderr instead, where torchrun shows it."""

    summary: dict = {}

    def __init__(self, rank: int):
        self.rank = rank
        self._t0 = time.monotonic()
        self.finished = False

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def log(self, metrics, **_steps) -> dict:
        return dict(metrics)

    def update_summary(self, *_args, **_kwargs) -> None:
        pass

    def write_json(self, name, obj) -> None:
        pass

    def write_text(self, name, text) -> None:
        if name == "error.log":
            print(f"[rank {self.rank}] {text.rstrip()}", file=sys.stderr, flush=True)

    def rewind(self, update: int) -> int:
        return 0

    def finish(self, status: str = COMPLETED, reason: str | None = None, **fields) -> dict:
        self.finished = True
        return {"status": status, "reason": reason, **fields}
