"""The example-passes of a run: the cost model of experiments.sweep_cost.

Unit: one *example-pass* is the forward and backward pass of one feature at the sweep's max_seq_length; a forward
alone counts FORWARD_SHARE of it (the backward costs about twice the forward: Kaplan et al. 2020, §2.1, 2N vs 4N
FLOPs per token). Per optimizer update over a window of N = k × micro-batch examples (sam/train_step.py's modes):

    none                      N                           AdamW: one pass over the window
    full, micro               2N                          both passes over the window
    last, last_only           2N                          literal loop: the second pass replays k micro-batches
    last       + shortcut     N + N/k                     one replay of the last micro-batch
    last_only  + shortcut     (N − N/k)·F + 2N/k          micro-batches 1..k−1 forward only, the last one twice

plus diagnostics.grad_fidelity (2N more every grad_fidelity_every updates) and the evaluations (forward only: the
eval subset every eval_every updates and the whole dev set at the end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

FORWARD_SHARE = 1 / 3  # a forward pass as a share of forward + backward


@dataclass
class RunCost:
    run_id: str
    label: str
    micro_batch: int
    train_passes: float  # example-passes of the training updates (and the gradient diagnostic)
    eval_passes: float  # example-passes of the evaluations (forward only, already × FORWARD_SHARE)

    @property
    def passes(self) -> float:
        return self.train_passes + self.eval_passes


def passes_per_update(replay: str, k: int, micro_batch: int, shortcut: bool = False) -> float:
    """Example-passes of one optimizer update (see the module docstring's table)."""
    n = k * micro_batch
    if replay == "none":
        return float(n)
    if shortcut and replay == "last":
        return n + n / k
    if shortcut and replay == "last_only":
        return (n - n / k) * FORWARD_SHARE + 2 * n / k
    return 2.0 * n


def run_cost(cfg: DictConfig, run_id: str = "", label: str = "") -> RunCost:
    """The example-passes of one run of `cfg`. Needs train.max_updates (the sweeps this estimates all set it)."""
    t = cfg.train
    if not t.max_updates:
        raise ValueError(f"{run_id or 'run'}: train.max_updates is null; the estimate needs the number of updates")
    updates = int(t.max_updates)
    k, micro = int(t.accumulation_steps), int(t.micro_batch_size)
    per_update = passes_per_update(cfg.optim.replay, k, micro, bool(cfg.optim.get("replay_shortcut", False)))
    train = updates * per_update
    d = cfg.diagnostics
    if d.grad_fidelity and d.grad_fidelity_every:
        train += (updates // int(d.grad_fidelity_every)) * 2 * k * micro
    evals = updates // int(t.eval_every) if t.eval_every else 0
    subset = cfg.eval.subset_size or cfg.data.generated.n_dev
    dev = cfg.data.generated.n_dev if cfg.data.source == "generated" else subset
    eval_passes = (evals * subset + dev) * FORWARD_SHARE
    return RunCost(run_id, label, micro, train, eval_passes)


def literal_passes(cfg: DictConfig, updates: int | None = None) -> float:
    """Example-passes of a run's updates as the literal loop computes them (no replay shortcut, no diagnostics, no
    evaluation): `updates` (those the run made, as its summary.json counts them; default train.max_updates) × N
    for AdamW, × 2N for every SAM arm. The compute floor counts these, so work that a shortcut removes counts as a
    gain; evaluation and diagnostics count as overhead. (An epoch's last, partial window counts as a full one.)"""
    t = cfg.train
    n_updates = int(updates if updates is not None else t.max_updates)
    return n_updates * passes_per_update(cfg.optim.replay, int(t.accumulation_steps), int(t.micro_batch_size))


def compute_floor(
    cfgs: Sequence[DictConfig],
    jobs: int,
    peak_gflops: float | None = None,
    updates: Sequence[int | None] | None = None,
) -> dict | None:
    """The physical floor of running these runs on `jobs` one-thread slots of this CPU:

        floor = max(Σ_runs FLOP_run ÷ jobs, max_runs FLOP_run) ÷ single-thread sgemm peak,
        FLOP_run = literal_passes × FLOP per example-pass

    FLOP per example-pass from the model at data.max_seq_length (experiments.bench_cpu.flop_per_example_pass; real
    features are often shorter, so the floor leans high), the peak given or measured now (bench_cpu.sgemm_peak).
    `updates`: per run, the updates it made (None: its train.max_updates). Returns {literal_example_passes, flop,
    peak_gflops, jobs, floor_s (seconds)}, or None when a run's number of updates is unknown."""
    counts = list(updates) if updates is not None else [None] * len(cfgs)
    counts = [n if n is not None else c.train.max_updates for c, n in zip(cfgs, counts, strict=True)]
    if not cfgs or any(not n for n in counts):
        return None
    from experiments.bench_cpu import flop_per_example_pass, sgemm_peak
    from experiments.model import load_model, load_tokenizer

    flop_of = {}  # (model, seq) -> FLOP per example-pass: the model is loaded once per distinct pair
    per_run, passes = [], [literal_passes(c, n) for c, n in zip(cfgs, counts, strict=True)]
    for cfg, n_passes in zip(cfgs, passes, strict=True):
        key = (str(cfg.model.name_or_path), int(cfg.data.max_seq_length))
        if key not in flop_of:
            model = load_model(cfg.model, load_tokenizer(cfg.model.name_or_path))
            flop_of[key] = flop_per_example_pass(model, key[1])
        per_run.append(n_passes * flop_of[key])
    flop = sum(per_run)
    peak = round(peak_gflops or sgemm_peak(), 2)  # rounded before use, so the record reproduces floor_s
    return {
        "literal_example_passes": sum(passes),
        "flop": flop,
        "peak_gflops": peak,
        "jobs": jobs,
        "floor_s": max(flop / jobs, max(per_run)) / (peak * 1e9),
    }
