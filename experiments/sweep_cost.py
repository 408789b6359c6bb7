"""What a sweep costs before it runs: example-passes per run and the wall time they take on this machine.

    python -m experiments.sweep_cost SWEEP.yaml [key=value ...] [--jobs N] [--seconds-per-pass S]

Per run: example-passes by experiments.passes (the unit, and the table of passes per update by replay rule). Runs
already completed (or that `reuse` links in) cost nothing. Seconds per example-pass: measured here on the sweep's
model at each micro-batch size the runs use (a few training passes of random tokens at max_seq_length, with the
threads each of --jobs runs gets; small micro-batches cost more per example), or given. Real features are shorter
than max_seq_length (dynamic padding), so the estimate leans high. The wall estimate places the runs in grid order
onto --jobs slots, as the runner starts them.
"""

from __future__ import annotations

import argparse
import heapq
import os
import sys
import time
from collections.abc import Sequence

from omegaconf import DictConfig

from experiments.passes import run_cost


def measure_seconds_per_pass(cfg: DictConfig, threads: int, micro_batch: int = 8, repeats: int = 3) -> float:
    """Seconds per example-pass of cfg's model at data.max_seq_length: the median of `repeats` timed
    forward+backward passes of a random micro-batch (after one untimed), on `threads` CPU threads."""
    import torch

    from experiments.allocator import keep_large_blocks_on_heap
    from experiments.model import load_model, load_tokenizer

    keep_large_blocks_on_heap()  # as the runs it estimates will
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    model = load_model(cfg.model, tokenizer)
    model.train()
    seq = int(cfg.data.max_seq_length)
    vocab = model.config.vocab_size
    batch = {
        "input_ids": torch.randint(0, vocab, (micro_batch, seq)),
        "attention_mask": torch.ones(micro_batch, seq, dtype=torch.long),
        "start_positions": torch.randint(0, seq, (micro_batch,)),
        "end_positions": torch.randint(0, seq, (micro_batch,)),
    }
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / micro_batch


def pack(durations: Sequence[float], jobs: int) -> float:
    """Wall time of running `durations` in this order on `jobs` slots, each next run on the first free slot."""
    slots = [0.0] * max(1, jobs)
    for seconds in durations:
        heapq.heappush(slots, heapq.heappop(slots) + seconds)
    return max(slots)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"


def main(argv: Sequence[str] | None = None) -> int:
    from experiments.sweep import plan, reusable
    from experiments.sweep_spec import SweepError, expand, load_sweep

    parser = argparse.ArgumentParser(prog="python -m experiments.sweep_cost", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file")
    parser.add_argument("overrides", nargs="*", help="key=value for every run, as for experiments.sweep")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seconds-per-pass", type=float, default=None, help="skip the measurement")
    args = parser.parse_intermixed_args(argv)
    try:
        spec = load_sweep(args.sweep_file)
        runs = expand(spec, args.overrides)
    except SweepError as err:
        print(f"sweep_cost: error: {err}", file=sys.stderr)
        return 2
    todo = []
    for run in runs:
        plan(run)
        if run.action in ("run", "rerun") and reusable(run, spec) is None:
            todo.append(run_cost(run.cfg, run.run_id, run.label))
    print(f"sweep {spec.name}: {len(runs)} runs, {len(todo)} to train ({len(runs) - len(todo)} done or reused)")
    if not todo:
        return 0
    sizes = sorted({c.micro_batch for c in todo})
    if args.seconds_per_pass is not None:
        rates = dict.fromkeys(sizes, args.seconds_per_pass)
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        rates = {mb: measure_seconds_per_pass(runs[0].cfg, threads, micro_batch=mb) for mb in sizes}
        shown = ", ".join(f"{rates[mb] * 1e3:.0f} ms at micro-batch {mb}" for mb in sizes)
        print(f"  measured per example-pass (seq {runs[0].cfg.data.max_seq_length}, {threads} thread(s)): {shown}")
    seconds = [c.passes * rates[c.micro_batch] for c in todo]
    total = sum(c.passes for c in todo)
    print(
        f"  {total:,.0f} example-passes ({sum(c.eval_passes for c in todo):,.0f} of them evaluation) ≈ "
        f"{_minutes(sum(seconds))} of compute; ≈ {_minutes(pack(seconds, args.jobs))} of wall time on {args.jobs} slots"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
