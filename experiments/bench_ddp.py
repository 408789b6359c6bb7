"""What data-parallel SAM pays for its global perturbation: the extra all-reduce, measured.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m experiments.bench_ddp   # `make bench-ddp`
    ... -m experiments.bench_ddp --model tiny --windows 2                                     # a smoke test

`full` with a global perturbation all-reduces the window gradient twice (before e, and the update's gradient);
with a per-rank perturbation once, like AdamW (`none`). On the same model, window and ranks this measures, per
window: `full/global`, `full/per_rank` and `none` (interleaved, the order rotating from one repetition to the next,
every window started after a barrier and timed on rank 0 until train_step returns, which its closing all-reduce of
the statistics makes the moment the slowest rank is done), and the collective on its own: an all-reduce of one
flat fp32 buffer as large as all parameters, and of the three numbers train_step reduces for its statistics.
The extra all-reduce's cost is the median over repetitions of full/global − full/per_rank in the same repetition.

Each rank gets its own random micro-batches (random tokens and start/end labels, seed + rank). The model is in
train mode with dropout, AdamW, rho 0.05, clip 1.0. It writes every timing, the medians, the gradient bucket count
(DDP all-reduces a gradient in buckets; counted with a communication hook) and the environment to --out (rank 0).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from sam import SAM, train_step

from .bench_common import environment, load_bench_model, make_window, param_bytes
from .distributed import count_allreduces, torchrun_environment

VARIANTS = ("none", "full/global", "full/per_rank")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench_ddp",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help="model folder or hub name; default the embedded MiniLM; 'tiny'")
    p.add_argument("--seq", type=int, default=64, help="tokens per example")
    p.add_argument("--micro-batch", type=int, default=4, help="examples per micro-batch per rank")
    p.add_argument("--k", type=int, default=2, help="micro-batches per window per rank")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--windows", type=int, default=9, help="timed repetitions (each runs every variant once)")
    p.add_argument("--collective-reps", type=int, default=20, help="timed all-reduces of the parameter-sized buffer")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank")
    p.add_argument("--timeout", type=float, default=600.0, help="collective timeout, seconds")
    p.add_argument("--out", default="results/bench/ddp_cpu.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("seq", "micro_batch", "k", "windows", "collective_reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def timed(fn) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if torchrun_environment() is None:
        raise SystemExit(
            "run it under torchrun: python -m torch.distributed.run --standalone --nproc_per_node=2 "
            "-m experiments.bench_ddp"
        )
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    started = time.perf_counter()
    model, source = load_bench_model(args.model, args.seq)
    torch.manual_seed(args.seed)
    ddp = DDP(model, forward_sync_buffers=False)
    buckets = count_allreduces(ddp)
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-5, weight_decay=0.01)
    args_rank = argparse.Namespace(**{**vars(args), "seed": args.seed + rank})
    window = make_window(model, args_rank, device)

    def loss_fn(batch):
        return ddp(**batch).loss

    def run(variant: str) -> None:
        replay, _, perturbation = variant.partition("/")
        optimizer = sam.base_optimizer if replay == "none" else sam
        train_step(
            loss_fn, window, optimizer, replay=replay, perturbation=perturbation or "global", max_grad_norm=1.0, ddp=ddp
        )

    raw: dict[str, list[float]] = {v: [] for v in VARIANTS}
    counts: dict[str, int] = {}
    for rep in range(args.warmup + args.windows):
        order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
        for variant in order:
            buckets.clear()
            seconds = timed(functools.partial(run, variant))
            counts[variant] = len(buckets)
            if rep >= args.warmup:
                raw[variant].append(seconds)

    flat = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float32)
    tiny = torch.zeros(3, dtype=torch.float64)
    collective = {"param_sized_all_reduce": [], "stats_all_reduce": []}
    for _ in range(args.collective_reps):
        collective["param_sized_all_reduce"].append(timed(lambda: dist.all_reduce(flat)))
        collective["stats_all_reduce"].append(timed(lambda: dist.all_reduce(tiny)))

    extra = [g - p for g, p in zip(raw["full/global"], raw["full/per_rank"])]
    medians = {v: statistics.median(t) for v, t in raw.items()}
    result = {
        "settings": {**vars(args), "world_size": world, "backend": "gloo", "model_source": source},
        "env": environment(device, args),
        "params": {"count": int(flat.numel()), "bytes": param_bytes(model)},
        "buckets_per_window": counts,  # comm-hook calls per window: gradient all-reduces × buckets
        "seconds_per_window": raw,
        "median_seconds_per_window": medians,
        "extra_all_reduce": {
            "per_repetition_s": extra,
            "median_s": statistics.median(extra),
            "median_share_of_full_per_rank": statistics.median(e / p for e, p in zip(extra, raw["full/per_rank"])),
        },
        "collectives_s": collective,
        "collective_medians_s": {k: statistics.median(v) for k, v in collective.items()},
        "wall_seconds": time.perf_counter() - started,
    }
    if rank == 0:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print_report(result, out)
    ddp = None  # before the group goes, or exit can deadlock in gloo's teardown (experiments.distributed.Dist.close)
    dist.destroy_process_group()
    return result


def print_report(result: dict, out: Path) -> None:
    s, m = result["settings"], result["median_seconds_per_window"]
    print(
        f"{s['world_size']} ranks (gloo, {s['threads']} thread each), {result['params']['count'] / 1e6:.1f} M "
        f"parameters, window = {s['k']} x {s['micro_batch']} examples x {s['seq']} tokens per rank, "
        f"{s['windows']} repetitions"
    )
    per_variant_buckets = result["buckets_per_window"]
    for variant in VARIANTS:
        print(f"  {variant:<14} {m[variant]:8.3f} s/window   comm-hook calls {per_variant_buckets[variant]}")
    e, c = result["extra_all_reduce"], result["collective_medians_s"]
    print(
        f"  extra all-reduce (full/global - full/per_rank): {e['median_s'] * 1e3:.1f} ms per window "
        f"({100 * e['median_share_of_full_per_rank']:.1f} % of full/per_rank)"
    )
    print(
        f"  all-reduce of a parameter-sized fp32 buffer ({result['params']['bytes'] / 2**20:.1f} MiB): "
        f"{c['param_sized_all_reduce'] * 1e3:.1f} ms; of 3 float64 (train_step's statistics): "
        f"{c['stats_all_reduce'] * 1e6:.0f} us"
    )
    print(f"  -> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
