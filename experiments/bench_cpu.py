"""How far a training pass is from this CPU's limit, in one command: the pass time, its achieved GFLOP/s, the
single-thread sgemm peak measured in the same run, and their ratio.

    python -m experiments.bench_cpu                      # `make bench-cpu`: results/bench/cpu.json
    python -m experiments.bench_cpu --micro-batch 8 --seq 128

The pass is what the default ablation runs most: one forward + backward of the embedded MiniLM (train mode, so with
dropout) on a micro-batch of random tokens at the sweep's sequence length, on one thread, as every sweep run trains
(`make run-all` runs 2 one-thread runs side by side). Its FLOPs are counted as in experiments.bench_train:

    FLOP per pass = Σ_features (6 · N · t + 12 · L · d · t²)     (PaLM, Chowdhery et al. 2022, App. B)

with N the non-embedding parameters, t tokens per feature, L layers, d the hidden size. The peak is the median
GFLOP/s of square fp32 matmuls (2 n³ FLOP each) on one thread, the best of a few sizes. The two are measured in
alternating rounds, so that a neighbour's load on the shared machine slows both alike; each reported number is the
median over the rounds. experiments.sweep uses the same peak (`sgemm_peak`) and FLOP count (`flop_per_example_pass`)
for the compute floor it prints at the end of a CPU sweep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

SGEMM_SIZES = (512, 1024, 2048)


def sgemm_gflops(n: int, repeats: int = 3) -> float:
    """Median GFLOP/s of `repeats` n × n fp32 matmuls (after one untimed) on the current torch threads."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def sgemm_peak(sizes: tuple[int, ...] = SGEMM_SIZES, repeats: int = 3) -> float:
    """The single-thread sgemm peak in GFLOP/s: the best of sgemm_gflops over `sizes`, on 1 thread (the threads
    setting is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return max(sgemm_gflops(n, repeats) for n in sizes)
    finally:
        torch.set_num_threads(threads)


def flop_per_example_pass(model: torch.nn.Module, seq: int) -> float:
    """FLOPs of the forward + backward of one feature of `seq` tokens (bench_train.model_flops_per_update)."""
    from experiments.bench_train import model_flops_per_update

    return model_flops_per_update(model, [seq])


def summary_line(result: dict) -> str:
    """The result in one sentence (printed, and quoted by README's Tests and benchmarks)."""
    s = result["settings"]
    return (
        f"training pass ({s['micro_batch']} × {s['seq']} tokens, 1 thread): {result['pass_s'] * 1e3:.0f} ms for "
        f"{result['flop_per_pass'] / 1e9:.2f} GFLOP = {result['achieved_gflops']:.1f} GFLOP/s; single-thread sgemm "
        f"peak {result['sgemm_peak_gflops']:.1f} GFLOP/s in the same run: {100 * result['share_of_peak']:.0f} % of "
        f"the peak"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench_cpu",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="embedded", help="embedded, tiny or a local folder")
    p.add_argument("--micro-batch", type=int, default=4, help="features per pass (the default ablation's)")
    p.add_argument("--seq", type=int, default=64, help="tokens per feature (the default ablation's max_seq_length)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of peak and passes")
    p.add_argument("--passes", type=int, default=3, help="timed passes per round (after one untimed)")
    p.add_argument("--out", default="results/bench/cpu.json")
    args = p.parse_args(argv)
    if min(args.micro_batch, args.seq, args.rounds, args.passes) < 1:
        p.error("--micro-batch, --seq, --rounds and --passes must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    from experiments.allocator import keep_large_blocks_on_heap
    from experiments.bench_common import load_bench_model, make_window
    from experiments.provenance import env_info
    from experiments.rundir import atomic_write_json

    keep_large_blocks_on_heap()  # as every training run does
    torch.set_num_threads(1)
    model, source = load_bench_model(args.model, args.seq)
    window = make_window(model, argparse.Namespace(k=1, micro_batch=args.micro_batch, seq=args.seq, seed=0), "cpu")
    batch = window[0]
    flop = flop_per_example_pass(model, args.seq) * args.micro_batch

    def one_pass() -> float:
        start = time.perf_counter()
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)  # as the training loop does: the next backward allocates its gradients
        return time.perf_counter() - start

    one_pass()
    peaks, passes = [], []
    started = time.perf_counter()
    for i in range(args.rounds):
        peaks.append(sgemm_peak())
        passes.append(statistics.median(one_pass() for _ in range(args.passes)))
        shown = f"sgemm {peaks[-1]:.1f} GFLOP/s, pass {passes[-1] * 1e3:.0f} ms"
        print(f"  round {i + 1}/{args.rounds}: {shown}", flush=True)
    peak, pass_s = statistics.median(peaks), statistics.median(passes)
    achieved = flop / pass_s / 1e9
    result = {
        "settings": {**vars(args), "model_resolved": source, "threads": 1},
        "env": env_info(torch.device("cpu")),
        "flop_per_pass": flop,
        "pass_s": pass_s,
        "pass_s_rounds": passes,
        "achieved_gflops": achieved,
        "sgemm_peak_gflops": peak,
        "sgemm_peak_rounds": peaks,
        "share_of_peak": achieved / peak,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(summary_line(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
