"""One MRC training run: `python -m experiments.train CONFIG.yaml [CONFIG.yaml ...] [key=value ...]`

Reads top to bottom like the run itself: config → model and data (bad input fails here, before anything is written)
→ run directory (resume if a checkpoint is there) → windows of k micro-batches through `sam.train_step` → evaluation
at every epoch end and at the end → summary. With no arguments at all it runs nothing and shows how to start.

Ctrl-C (SIGINT), SIGTERM (what a cluster scheduler or the sweep runner sends) and SIGHUP end the run the same way:
summary.json says failed with the reason "interrupted by SIGTERM at update N of M" and whether a rerun of the same
command resumes (from the last resume checkpoint: train.checkpoint_every / train.checkpoint_every_minutes) or starts
over. Exit codes: 0 completed (or already complete), 1 failed, 2 bad input, 3 diverged, 128 + the signal's number when
interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).

Data-parallel over N processes: `torchrun --standalone --nproc_per_node=N -m experiments.train ...` (the same
arguments); experiments/distributed.py says what each rank does.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import signal
import statistics
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .batches import LABELS, MODEL_INPUTS, columns_of, epoch_windows, subset_rows, to_features
from .qa_eval import metric_keys
from .qa_loss import span_loss
from .rundir import (
    COMPLETED,
    CONFLICT,
    DIVERGED,
    DONE_STATUSES,
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_OK,
    FAILED,
    run_state,
    signal_exit_code,
)
from .rundir import run_dir as run_dir_of
from .tracking import signal_of

EXAMPLE_COLUMNS = ("id", "context", "answers")  # what evaluation reads of the dev examples
DDP_CLOCK_EVERY = 10  # data-parallel: updates between two looks at the clock for time-based resume checkpoints
log = logging.getLogger("experiments.train")


class Diverged(RuntimeError):
    """The loss became NaN/inf; the run stops with status `diverged`."""


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal turned into an exception, so SIGTERM and SIGHUP end a run through the same path as Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_raise():
    """While inside: SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread (a signal the process ignores,
    as under nohup, stays ignored). The previous handlers come back on exit."""
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def handler(signum, _frame):
            raise Interrupted(signum)

        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _offline_defaults(cfg) -> None:
    """The embedded default needs no hub: make hub look-ups fail in a second instead of hanging on retries."""
    from .config import EMBEDDED_MODEL, TINY_MODEL

    local_model = cfg.model.name_or_path in (EMBEDDED_MODEL, TINY_MODEL) or Path(cfg.model.name_or_path).is_dir()
    if local_model and cfg.data.source != "hub":
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(key, "1")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(choice: str):
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


# ----------------------------------------------------------------------------------------------------------------------
# optimizer


def fused_adamw_available(device) -> bool:
    """Whether the installed torch has a fused AdamW kernel for fp32 parameters on `device` (asked of torch itself:
    constructing one raises RuntimeError where there is none)."""
    import torch

    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except RuntimeError:
        return False
    return True


def build_optimizer(model, optim_cfg):
    """AdamW with no weight decay on biases and LayerNorm weights; wrapped in SAM unless replay is none.

    `optim.fused`: null uses the fused kernel where torch has one for the parameters' device, true requires it
    (ValueError otherwise), false never uses it. The chosen setting is in the optimizer's param groups ("fused").

    For ASAM the param groups also say which tensors are weights (`is_weight`, T = |w| + eta) and which are biases
    (T = 1), by name as the authors' code does (SamsungLabs/ASAM: "weight" in the parameter's name), so LayerNorm
    scales count as weights and every bias, the new QA head's included, as a bias."""
    import torch

    from sam import SAM

    decay, no_decay_weights, biases = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and "LayerNorm" not in name and "layer_norm" not in name:
            decay.append(p)
        else:
            (no_decay_weights if name.rsplit(".", 1)[-1].endswith("weight") else biases).append(p)
    groups = [
        {"params": decay, "weight_decay": optim_cfg.weight_decay, "is_weight": True},
        {"params": no_decay_weights, "weight_decay": 0.0, "is_weight": True},
        {"params": biases, "weight_decay": 0.0, "is_weight": False},
    ]
    groups = [g for g in groups if g["params"]]
    device = next(model.parameters()).device
    fused = optim_cfg.fused
    if fused is None:
        fused = fused_adamw_available(device)
    elif fused and not fused_adamw_available(device):
        raise ValueError(
            f"optim.fused=true but torch {torch.__version__} has no fused AdamW on {device.type}; "
            f"set optim.fused=null (use it where available) or false"
        )
    kwargs = dict(lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, fused=bool(fused))
    if optim_cfg.replay == "none":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "is_weight"} for g in groups], **kwargs)
    return SAM(groups, torch.optim.AdamW, rho=optim_cfg.rho, adaptive=optim_cfg.adaptive, eta=optim_cfg.eta, **kwargs)


def linear_schedule(optimizer, total_updates: int, warmup_ratio: float):
    """lr × u/W during warmup (W updates), then linear decay to 0 at `total_updates`; stepped once per update."""
    import torch

    warmup = int(round(warmup_ratio * total_updates))

    def factor(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        return max(0.0, (total_updates - update) / max(1, total_updates - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Progress:
    """Where training stands; saved in resume checkpoints."""

    update: int = 0
    epoch: int = 0  # the epoch in progress
    window: int = 0  # next window index inside `epoch`
    examples: int = 0  # training examples (questions) reached: each counts once per epoch, see window_examples
    step_time_total: float = 0.0
    step_times: list = field(default_factory=list)  # per update (the median ignores warm-up outliers)
    best: dict | None = None
    last_eval: dict | None = None
    last_train: dict = field(default_factory=dict)
    # wall seconds spent outside the training steps, kept across resumes (summary.json "time")
    eval_time: float = 0.0
    diagnostic_time: float = 0.0
    checkpoint_time: float = 0.0
    evaluations: int = 0


class Trainer:
    def __init__(self, cfg, run_dir: Path, dist=None):
        import torch

        from .data import load_examples, prepare_features
        from .distributed import Dist
        from .model import load_model, load_tokenizer

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist if dist is not None else Dist()  # one process unless torchrun started several
        self.device = self.dist.device if self.dist.enabled else pick_device(cfg.train.device)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if self.device.type == "cuda" and cfg.train.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on TF32 tensor cores (Ampere and later)
            torch.backends.cudnn.allow_tf32 = True
        seed_everything(cfg.seed)

        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        train_ex, dev_ex, self.data_stats = load_examples(cfg.data)
        if len(train_ex) == 0 or len(dev_ex) == 0:
            raise ValueError(f"no usable examples (train {len(train_ex)}, dev {len(dev_ex)}); check data.*")
        # records the tokenizer cannot handle are refused by name, or skipped and counted (data.strict=false)
        train_ex, dev_ex, train_ds, dev_ds = prepare_features(
            cfg.data, self.tokenizer, train_ex, dev_ex, self.data_stats
        )
        batching = dict(pad_to_max_length=cfg.data.pad_to_max_length, pin_memory=self.device.type == "cuda")
        # what post-processing and scoring read, converted from Arrow once: (examples, features) columns
        self.dev_examples = columns_of(dev_ex, EXAMPLE_COLUMNS)
        self.train = to_features(train_ds, MODEL_INPUTS + LABELS, **batching)
        self.dev = to_features(dev_ds, MODEL_INPUTS + LABELS, **batching)
        self.dev_subset = self._dev_subset()  # (example columns, Features) or None
        self.data_stats.update(train_features=len(self.train), dev_features=len(self.dev))
        if self.dev_subset is not None:
            self.data_stats.update(
                dev_subset_examples=self.dev_subset[0].num_rows, dev_subset_features=len(self.dev_subset[1])
            )

        t = cfg.train
        # one global micro-batch = world_size × micro_batch_size features, each rank a slice (see window_batches)
        self.micro_per_epoch = math.ceil(len(self.train) / (t.micro_batch_size * self.dist.world_size))
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / t.accumulation_steps)
        self.total_updates = t.epochs * self.updates_per_epoch
        if t.max_updates:
            self.total_updates = min(self.total_updates, t.max_updates)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if t.precision == "fp16" else None

        seed_everything(cfg.seed)  # the new QA head (or the tiny model) is initialised from the run seed
        self.set_model(load_model(cfg.model, self.tokenizer))
        if self.dist.world_size > 1:
            from .distributed import rank_seed

            seed_everything(rank_seed(cfg.seed, self.dist.rank))  # each rank its own dropout masks
        self.progress = Progress()
        self.tracker = None
        self._example_index = None  # feature → example number, for window_examples (built on first use)
        self._last_checkpoint = None  # monotonic time of the last resume checkpoint (or of the first update)

    def set_model(self, model) -> None:
        """Train `model` (moved to the device): the forward modules (torch.compile, DDP), a fresh optimizer and lr
        schedule. __init__ calls it with the config's model; the training benchmark with a bert-base-size one."""
        import torch

        cfg = self.cfg
        self.model = model.to(self.device)
        # the module that runs forward passes; save_pretrained and the optimizer keep using self.model
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        # training forwards go through DDP when torchrun started the run (evaluation and diagnostics do not: they
        # must not touch DDP's gradient synchronisation); DDP starts every rank from rank 0's weights
        self.ddp = None
        self.train_forward = self.forward
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # no buffer broadcast before every forward: the models here hold only constant buffers (position ids)
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None, forward_sync_buffers=False
            )
            self.train_forward = torch.compile(self.ddp) if cfg.train.compile else self.ddp
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = linear_schedule(self.optimizer, self.total_updates, cfg.optim.warmup_ratio)

    def _dev_subset(self):
        """(examples, Features) of the fixed dev subset that periodic evaluations score; None when they score all."""
        size, every = self.cfg.eval.subset_size, self.cfg.train.eval_every
        if size is None:
            return None
        if not every:
            log.warning(
                "eval.subset_size=%s has no effect with train.eval_every=0: epoch-end and final "
                "evaluations always score the whole dev set",
                size,
            )
            return None
        if size >= self.dev_examples.num_rows:
            return None
        # from the columns already converted for evaluation, not from Arrow again
        example_rows, feature_rows = subset_rows(
            self.dev_examples["id"], self.dev.eval_columns()["example_id"], size, self.cfg.eval.subset_seed
        )
        examples = self.dev_examples.select(example_rows)
        return examples, self.dev.select(feature_rows)

    # -- pieces ------------------------------------------------------------------------------------------------------
    def autocast(self):
        import torch

        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def outputs(self, batch: dict, forward=None):
        """(model outputs, masked span loss) of one batch; see experiments.qa_loss for why not the model's loss.
        `forward`: the module to run (default self.forward, the model without DDP)."""
        with self.autocast():
            out = (forward if forward is not None else self.forward)(
                **{k: batch[k] for k in MODEL_INPUTS if k in batch}
            )
        loss = span_loss(
            out.start_logits, out.end_logits, batch["attention_mask"], batch["start_positions"], batch["end_positions"]
        )
        return out, loss

    def loss_fn(self, batch: dict):
        """The training loss of one micro-batch, through DDP when data-parallel."""
        return self.outputs(batch, self.train_forward)[1]

    def local_loss_fn(self, batch: dict):
        """The same loss without DDP (no gradient synchronisation): for the diagnostics."""
        return self.outputs(batch)[1]

    def evaluate(self, kind: str) -> dict:
        """Dev loss (mean over THIS evaluation's features, not a running mean), EM/F1 from n-best post-processing.

        Periodic evaluations score the fixed dev subset when `eval.subset_size` is set, the others the whole dev set.
        Batches are cut in length order; every batch's logits go back to its features' rows, so post-processing
        maps each answer to its example id exactly as with unsorted batches. Data-parallel: each rank runs its
        round-robin share of the batches, rank 0 gathers them all and scores; returns None on the other ranks.
        """
        import numpy as np
        import torch

        from .qa_eval import postprocess_predictions, score_predictions

        subset = kind == "periodic" and self.dev_subset is not None
        examples, features = self.dev_subset if subset else (self.dev_examples, self.dev)
        self.model.eval()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        pieces = []
        batches = features.eval_batches(self.cfg.train.eval_batch_size)
        if self.dist.enabled:
            from .distributed import shard

            batches = shard(batches, self.dist.rank, self.dist.world_size)
        with torch.inference_mode():
            for index in batches:
                out, loss = self.outputs(features.batch(index, self.device))
                total_loss += loss.double() * len(index)
                pieces.append((index, out.start_logits.float(), out.end_logits.float()))
        self.model.train()
        if self.dist.enabled:  # every batch's rows and logits to rank 0 (as numpy: any backend carries them)
            mine = ([(ix.numpy(), s.cpu().numpy(), e.cpu().numpy()) for ix, s, e in pieces], float(total_loss))
            gathered = self.dist.gather(mine)
            if gathered is None:
                return None
            pieces = [
                (torch.from_numpy(ix), torch.from_numpy(s), torch.from_numpy(e))
                for part, _ in gathered
                for ix, s, e in part
            ]
            total_loss = torch.tensor(sum(loss_sum for _, loss_sum in gathered), dtype=torch.float64)
        # positions past a batch's width are padding: their offsets are None, so post-processing never reads them
        starts = np.full((len(features), features.max_seq_length), -np.inf, dtype=np.float32)
        ends = np.full_like(starts, -np.inf)
        for index, start, end in pieces:
            rows = index.numpy()
            starts[rows, : start.shape[1]] = start.cpu().numpy()
            ends[rows, : end.shape[1]] = end.cpu().numpy()
        e, d = self.cfg.eval, self.cfg.data
        predictions, null_odds = postprocess_predictions(
            examples,
            features.eval_columns(),
            starts,
            ends,
            n_best_size=e.n_best_size,
            max_answer_length=e.max_answer_length,
            version_2_with_negative=d.version_2_with_negative,
            null_score_diff_threshold=e.null_score_diff_threshold,
            return_null_odds=True,
        )
        references = {ex_id: list(ans["text"]) for ex_id, ans in zip(examples["id"], examples["answers"])}
        # the official rules of data.metric (SQuAD v1.1 / v2.0, KorQuAD, KLUE-MRC); details go to summary.json
        scores, details = score_predictions(
            predictions,
            references,
            metric=d.metric,
            version_2_with_negative=d.version_2_with_negative,
            null_odds=null_odds if d.version_2_with_negative else None,
        )
        if not subset:
            self.tracker.write_json("predictions.json", predictions)
            self.tracker.update_summary(scores={"kind": kind, **details})
        return {
            "dev/loss": float(total_loss) / len(features),
            **scores,
            "eval/kind": kind,
            "eval/subset": subset,
            "eval/examples": examples.num_rows,
        }

    def record_eval(self, metrics: dict) -> None:
        p = self.progress
        event = dict(metrics)
        self.tracker.log(event, update=p.update, epoch=self.epoch_float(), examples=p.examples)
        snapshot = {k: v for k, v in metrics.items() if k.startswith("dev/") or k == "eval/examples"}
        snapshot.update(update=p.update, epoch=round(self.epoch_float(), 4))
        p.last_eval = snapshot
        key = self.cfg.train.save_best_by
        # the best checkpoint is chosen among evaluations of the whole dev set: a subset's score is a noisier
        # estimate of the same dev score, and the maximum over noisy estimates favours the lucky ones
        better = not metrics["eval/subset"] and (
            p.best is None or (metrics[key] < p.best["value"] if key == "dev/loss" else metrics[key] > p.best["value"])
        )
        if better:
            p.best = {"metric": key, "value": metrics[key], **snapshot}
            if self.cfg.train.save_model and self.dist.is_main:
                from .model import save_pretrained_atomic

                with self.timed("checkpoint_time"):
                    save_pretrained_atomic(self.model, self.tokenizer, self.run_dir / "checkpoint" / "best")
        self.tracker.update_summary(best=p.best, final=self.final_block())
        cfg = self.cfg
        em_key, second = metric_keys(cfg.data.metric)  # dev/f1, or dev/rouge_w for KLUE-MRC
        scored = f"{metrics['eval/examples']} dev examples" + (" (subset)" if metrics["eval/subset"] else "")
        console(
            f"[{cfg.arm} k={cfg.train.accumulation_steps} seed={cfg.seed}] {metrics.get('eval/kind', 'eval')} "
            f"evaluation at update {p.update} (epoch {self.epoch_float():.2f}, {scored}): "
            f"{second} {metrics[second]:.2f}  dev/em {metrics[em_key]:.2f}  dev/loss {metrics['dev/loss']:.4f}"
            + ("  (best so far)" if better else "")
        )

    def final_block(self) -> dict:
        p = self.progress
        out = dict(p.last_eval or {})
        if "train/loss" in p.last_train:
            out["train/loss"] = p.last_train["train/loss"]
        return out

    def epoch_float(self) -> float:
        p = self.progress
        return p.epoch + p.window / max(1, self.updates_per_epoch)

    @contextmanager
    def timed(self, field_name: str):
        """Add the wall seconds of the block to progress.<field_name>."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self.progress, field_name, getattr(self.progress, field_name) + time.perf_counter() - start)

    def time_summary(self, wall_s: float) -> dict:
        """Where the run's wall time went (seconds and shares of `wall_s`, the run's wall time)."""
        p = self.progress
        parts = {
            "train_steps_s": p.step_time_total,
            "eval_s": p.eval_time,
            "diagnostics_s": p.diagnostic_time,
            "checkpoints_s": p.checkpoint_time,
        }
        out = {k: round(v, 3) for k, v in parts.items()}
        out["other_s"] = round(max(0.0, wall_s - sum(parts.values())), 3)
        out["evaluations"] = p.evaluations
        for name in ("train_steps", "eval", "diagnostics"):
            out[f"{name}_share"] = round(parts[f"{name}_s"] / wall_s, 4) if wall_s > 0 else None
        return out

    def window_examples(self, windows) -> list[int]:
        """For each window of an epoch, how many training examples it reaches first in that epoch: an example counts
        once per epoch, at the window holding the first of its features (a long context gives one example several
        features, possibly in different windows), so over a whole epoch the counts add up to the number of examples
        that have features. Features carry `example_id` (experiments.data.features)."""
        import numpy as np
        import torch

        if self._example_index is None:
            ids = self.train.dataset["example_id"]
            self._example_index = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)[1]
        order = torch.cat([ix for window in windows for ix in window]).numpy()
        first = np.zeros(len(order), dtype=np.int64)
        first[np.unique(self._example_index[order], return_index=True)[1]] = 1
        bounds = np.cumsum([0] + [sum(len(ix) for ix in window) for window in windows])
        return [int(first[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]

    def checkpoint_due(self) -> bool:
        """A resume checkpoint now? Every train.checkpoint_every updates, and whenever train.checkpoint_every_minutes
        of training have passed since the last one (or since the first update of this process)."""
        t, now = self.cfg.train, time.monotonic()
        last = self._last_checkpoint
        if last is None:
            self._last_checkpoint = last = now
        by_updates = bool(t.checkpoint_every) and self.progress.update % t.checkpoint_every == 0
        by_time = bool(t.checkpoint_every_minutes) and now - last >= 60.0 * t.checkpoint_every_minutes
        if self.dist.world_size > 1 and t.checkpoint_every_minutes:
            # saving is a collective (rank 0 gathers every rank's RNG state) and each rank has its own clock: rank 0
            # decides for all, or one rank would wait in the gather until dist.timeout_s. The clock is consulted
            # every DDP_CLOCK_EVERY updates only, so the broadcast is not a collective per update.
            due = self.progress.update % DDP_CLOCK_EVERY == 0
            by_time = bool(self.dist.broadcast(by_time)) if due else False
        return by_updates or by_time

    # -- one update ----------------------------------------------------------------------------------------------------
    def window_batches(self, window) -> tuple[list, list]:
        """The window's micro-batches (lists of feature indices) as device batches, and their sizes.

        Data-parallel: this rank's slice of each global micro-batch (`rank_slice`); an empty slice is the global
        micro-batch's first row with size 0 (weight 0 in train_step), so every rank runs the same passes."""
        if not self.dist.enabled:
            return [self.train.batch(ix, self.device) for ix in window], [len(ix) for ix in window]
        from .distributed import rank_slice

        batches, sizes = [], []
        for ix in window:
            part = rank_slice(ix, self.dist.rank, self.dist.world_size)
            batches.append(self.train.batch(part if len(part) else ix[:1], self.device))
            sizes.append(len(part))
        return batches, sizes

    def step(self, batches: list, sizes: list, global_sizes: list | None = None):
        """One optimizer update on the window: `sam.train_step`, then the lr schedule. `global_sizes`: the global
        micro-batches' sizes when data-parallel (`sizes` are this rank's slices).

        Returns (StepResult, wall seconds of train_step, the lr the update used). No host synchronisation per
        micro-batch: train_step reads its numbers once, at the end of the window.
        """
        import torch

        from sam import train_step

        start = time.perf_counter()
        o = self.cfg.optim
        parallel = dict(ddp=self.ddp, perturbation=o.perturbation, global_sizes=global_sizes) if self.ddp else {}
        result = train_step(
            self.loss_fn,
            batches,
            self.optimizer,
            replay=o.replay,
            sizes=sizes,
            max_grad_norm=o.max_grad_norm,
            scaler=self.scaler,
            reuse_dropout_rng=o.reuse_dropout_rng,
            **parallel,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return result, seconds, lr

    def diagnose(self, batches, sizes) -> dict | None:
        """The gradient-fidelity diagnostic on this window, when it is due (before the update, at its weights)."""
        d = self.cfg.diagnostics
        if not d.grad_fidelity or self.progress.update % d.grad_fidelity_every or not self.dist.is_main:
            return None
        from .diagnostics import last_vs_full_gradient

        # data-parallel: rank 0 alone, on its slices of the window, without DDP (a single-process window of them)
        with self.timed("diagnostic_time"):
            return last_vs_full_gradient(self.model, self.local_loss_fn, batches, sizes, self.optimizer.param_groups)

    def log_update(self, result, seconds: float, lr: float, diag: dict | None) -> None:
        p, t = self.progress, self.cfg.train
        if not math.isfinite(result.loss) or (result.skipped and self.scaler is None):
            raise Diverged(f"non-finite loss/gradient at update {p.update} (train/loss={result.loss})")
        metrics = {
            "train/loss": result.loss,
            "train/grad_norm": result.grad_norm,
            "train/lr": lr,
            "train/step_time": seconds,
        }
        if result.perturbed_loss is not None:
            metrics["train/perturbed_loss"] = result.perturbed_loss
        if self.scaler is not None:
            metrics["train/skipped"] = int(result.skipped)
        p.last_train = metrics
        if p.update % t.log_every == 0 or p.update == self.total_updates:
            self.tracker.log(metrics, update=p.update, epoch=self.epoch_float(), examples=p.examples)
        if diag is not None:
            self.tracker.log(diag, update=p.update, epoch=self.epoch_float(), examples=p.examples)

    def after_update(self, end_of_epoch: bool) -> None:
        """The evaluation and resume checkpoint due after this update, if any."""
        p, t = self.progress, self.cfg.train
        done = p.update >= self.total_updates
        kind = (
            "epoch"
            if end_of_epoch  # also the final evaluation when training ends here
            else "final"
            if done
            else "periodic"
            if t.eval_every and p.update % t.eval_every == 0
            else None
        )
        if kind is not None:
            with self.timed("eval_time"):
                metrics = self.evaluate(kind)
            p.evaluations += 1
            if metrics is not None:  # None on data-parallel ranks other than 0
                self.record_eval(metrics)
        if not done and self.checkpoint_due():
            from .checkpoint import save_resume_state

            with self.timed("checkpoint_time"):
                save_resume_state(self)
            self._last_checkpoint = time.monotonic()

    # -- loop --------------------------------------------------------------------------------------------------------
    def run(self, tracker) -> None:
        self.tracker = tracker
        cfg, t, p = self.cfg, self.cfg.train, self.progress
        self.model.train()
        bar = ProgressBar(
            self.total_updates,
            p.update,
            f"{cfg.arm} k={t.accumulation_steps} seed={cfg.seed}",
            enabled=self.dist.is_main,
        )
        # data-parallel: the single-process order of micro-batches of world_size × micro_batch_size features
        global_micro = t.micro_batch_size * self.dist.world_size
        while p.update < self.total_updates and p.epoch < t.epochs:
            windows = epoch_windows(len(self.train), global_micro, t.accumulation_steps, cfg.seed, p.epoch)
            new_examples = self.window_examples(windows)  # examples each window reaches first this epoch
            while p.window < len(windows) and p.update < self.total_updates:
                batches, sizes = self.window_batches(windows[p.window])
                global_sizes = [len(ix) for ix in windows[p.window]]
                diag = self.diagnose(batches, sizes)
                result, seconds, lr = self.step(batches, sizes, global_sizes)
                reached = new_examples[p.window]
                p.update, p.window, p.examples = p.update + 1, p.window + 1, p.examples + reached
                p.step_time_total += seconds
                p.step_times.append(round(seconds, 5))
                self.log_update(result, seconds, lr, diag)
                bar.step(result.loss, p.update)
                end_of_epoch = p.window == len(windows)
                if end_of_epoch:
                    p.epoch, p.window = p.epoch + 1, 0
                self.after_update(end_of_epoch)
        bar.close()
        if cfg.train.save_model and self.dist.is_main:
            from .model import save_pretrained_atomic

            with self.timed("checkpoint_time"):
                save_pretrained_atomic(self.model, self.tokenizer, self.run_dir / "checkpoint" / "final")


def console(line: str) -> None:
    """One line on stderr that does not tear a progress bar drawn on a terminal (tqdm.write)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class ProgressBar:
    """tqdm with loss and ETA on a terminal; plain log lines (about 20 per run) when output is a file."""

    def __init__(self, total: int, initial: int, label: str, enabled: bool = True):
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty() and enabled
        self.enabled = enabled
        self.every = max(1, total // 20)
        self.t0, self.initial = time.perf_counter(), initial
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit="upd", dynamic_ncols=True)

    def step(self, loss: float, update: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}")
            self.bar.update(1)
        elif self.enabled and (update % self.every == 0 or update == self.total):
            done = update - self.initial
            rate = (time.perf_counter() - self.t0) / max(1, done)
            eta = rate * (self.total - update)
            print(
                f"[{self.label}] update {update}/{self.total} loss {loss:.4f} {rate:.2f}s/upd ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------------------------------
# entry point


def prepare_run_dir(cfg, run_dir: Path) -> str:
    """Decide what to do with an existing run directory: 'new', 'resume', 'restart', 'completed' or 'diverged'
    (experiments.rundir.run_state has the table).

    A directory that holds a different config is refused (ValueError); a completed run is never rerun.
    """
    state = run_state(cfg, run_dir)
    if state.decision == CONFLICT:
        raise ValueError(
            f"run directory {run_dir} holds a different config (hash {state.stored_hash} != {state.own_hash}); "
            f"set run_name=... or results_dir=... to run this one elsewhere"
        )
    return state.decision


NO_ARGUMENTS = """usage: python -m experiments.train CONFIG.yaml [CONFIG.yaml ...] [key=value ...]
No arguments: nothing is run (the bare default is a full run of several minutes). For example:
  python -m experiments.train configs/smoke.yaml configs/arm/sam_full.yaml        a tiny run, about 10 s
  python -m experiments.train configs/default.yaml configs/arm/adamw.yaml         the embedded default (make run)
--help explains the arguments; README.md says what each run takes."""


def _interrupted(err: BaseException, trainer, tracker, run_dir: Path) -> int:
    """Record a run stopped by a signal: failed, with a reason that says where and whether a rerun resumes."""
    from .checkpoint import resume_point

    name, signum = signal_of(err)
    if tracker.finished:  # the signal came after the summary was final (e.g. while the resume state was removed)
        print(f"interrupted ({name}) after the run ended {tracker.summary['status']}: {run_dir}", file=sys.stderr)
        return signal_exit_code(signum)
    p, t = trainer.progress, trainer.cfg.train
    resumable = resume_point(run_dir)
    where = f"at update {p.update} of {trainer.total_updates}"
    if resumable is not None:
        outcome, advice = f"resumable from update {resumable}", "rerun the same command to resume"
    else:
        outcome = "not resumable (no resume checkpoint yet)"
        every = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("train.checkpoint_every", t.checkpoint_every),
                ("train.checkpoint_every_minutes", t.checkpoint_every_minutes),
            )
        )
        advice = f"a rerun starts over; {every}: set train.checkpoint_every=N (updates) to make it resumable sooner"
    reason = f"interrupted by {name} {where}; {outcome}"
    tracker.write_text("error.log", traceback.format_exc())
    tracker.finish(
        FAILED,
        reason=reason,
        updates=p.update,
        final=trainer.final_block(),
        best=p.best,
        interrupted={"signal": name, "update": p.update, "resumable_from": resumable},
    )
    print(f"interrupted ({name}) {where}: {outcome}; {advice} ({run_dir})", file=sys.stderr)
    return signal_exit_code(signum)


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError, load_config, split_args
    from .distributed import setup as setup_distributed

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return EXIT_OK
    if not argv:
        print(NO_ARGUMENTS, file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    files, overrides = split_args(argv)
    notes: list = []
    try:
        cfg = load_config(files, overrides, notes=notes)
        ctx = setup_distributed(cfg)  # under torchrun: dist.world_size from it, then join the process group
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not ctx.is_main:  # data-parallel: rank 0 speaks for the run; the others report only what goes wrong
        logging.getLogger().setLevel(logging.WARNING)
    for note in notes if ctx.is_main else ():  # which setting wins where two disagree, settings with no effect here
        print(note, file=sys.stderr)
    _offline_defaults(cfg)
    try:
        return _start(cfg, ctx)
    finally:
        ctx.close()


def _start(cfg, ctx) -> int:
    """What to do with the run directory (rank 0 decides and tells the other ranks), then the run, with Ctrl-C,
    SIGTERM and SIGHUP ending it honestly (stop_signals_raise)."""
    run_dir = run_dir_of(cfg)
    decided = None
    if ctx.is_main:  # before anyone writes
        try:
            decided = prepare_run_dir(cfg, run_dir)
        except ValueError as err:
            decided = ("error", str(err))
        if decided not in DONE_STATUSES and cfg.tracking.mode == "online":
            # before minutes of model and data loading, not after
            from .network import PROBE_TIMEOUT_S, reachable, wandb_url

            if not reachable(wandb_url()):
                decided = (
                    "error",
                    f"tracking.mode=online but the W&B server {wandb_url()} is not reachable within "
                    f"{PROBE_TIMEOUT_S:.0f} s; use tracking.mode=offline (upload later with make "
                    "sync) or set WANDB_BASE_URL",
                )
    decided = ctx.broadcast(decided)
    if isinstance(decided, tuple):
        if ctx.is_main:
            print(f"error: {decided[1]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    action = decided
    if action in DONE_STATUSES:
        if ctx.is_main:
            print(f"already {action}: {run_dir} (delete it to run again)", file=sys.stderr)
        return EXIT_OK if action == COMPLETED else EXIT_DIVERGED
    touched: list = []  # _run appends once the run directory holds a summary.json of this attempt
    with stop_signals_raise():
        try:
            return _run(cfg, ctx, run_dir, action, touched)
        except KeyboardInterrupt as err:
            name, signum = signal_of(err)
            if touched:  # a second signal while an earlier ending (diverged, failed) was being recorded
                print(
                    f"interrupted ({name}) while the run was ending; summary.json has its status ({run_dir})",
                    file=sys.stderr,
                )
            else:  # model and data loading: the run directory was not touched
                print(
                    f"interrupted ({name}) during start-up, before anything was written to {run_dir}", file=sys.stderr
                )
            return signal_exit_code(signum)


def _run(cfg, ctx, run_dir: Path, action: str, touched: list) -> int:
    from .checkpoint import remove_resume_state
    from .data import DataError, describe_data
    from .model import ModelError
    from .tracking import TrackingError

    try:
        trainer = Trainer(cfg, run_dir, ctx)  # model and data: bad input fails here, before the run dir is touched
    except (DataError, ModelError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from .tracking import RunTracker

    resume = False
    if action == "resume":
        from .checkpoint import load_resume_state

        resume = load_resume_state(trainer)
        if len(set(ctx.all_gather(resume))) > 1:
            print(f"error: the ranks could not all read the resume checkpoint in {run_dir}", file=sys.stderr)
            return EXIT_FAILED
        if not resume:
            log.warning("resume checkpoint unusable; starting %s over", run_dir)
    if not resume and action == "restart" and ctx.is_main:
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    try:
        # RunTracker writes summary.json (running) first; a signal or error while it starts W&B is recorded there
        if ctx.is_main:
            tracker = RunTracker(cfg, run_dir, resume=resume, device=trainer.device)
        else:
            from .distributed import NullTracker

            tracker = NullTracker(ctx.rank)
    except TrackingError as err:
        print(f"failed: {err} ({run_dir})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as err:
        name, signum = signal_of(err)
        print(f"interrupted ({name}) during start-up (starting W&B); summary.json says so ({run_dir})", file=sys.stderr)
        return signal_exit_code(signum)
    touched.append(run_dir)
    try:
        if resume:
            tracker.rewind(trainer.progress.update)
        from .model import count_parameters

        tracker.update_summary(
            data=trainer.data_stats,
            parameters=count_parameters(trainer.model),
            total_updates=trainer.total_updates,
            optimizer={"fused_adamw": bool(trainer.optimizer.param_groups[0].get("fused"))},
            **({"dist": ctx.describe()} if ctx.enabled else {}),
        )
        if ctx.is_main:
            print(describe_data(trainer.data_stats), file=sys.stderr)
            where = f"resuming at update {trainer.progress.update}" if resume else "starting"
            ranks = f", {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
            print(
                f"{where}: {run_dir} ({trainer.total_updates} updates, {trainer.data_stats['train_features']} "
                f"train features, device {trainer.device}{ranks})",
                file=sys.stderr,
            )
        trainer.run(tracker)
        p = trainer.progress
        wall = tracker.elapsed()
        summary = tracker.finish(
            COMPLETED,
            final=trainer.final_block(),
            best=p.best,
            updates=p.update,
            examples=p.examples,
            mean_step_time_s=round(p.step_time_total / max(1, p.update), 4),
            median_step_time_s=round(statistics.median(p.step_times), 4) if p.step_times else None,
            wall_time_s=round(wall, 3),
            time=trainer.time_summary(wall),
        )
        if ctx.is_main:
            remove_resume_state(run_dir)  # a completed run is never resumed; the checkpoint is the model + optimizer
    except Diverged as err:
        p = trainer.progress
        wall = tracker.elapsed()
        tracker.finish(
            DIVERGED,
            reason=str(err),
            final=trainer.final_block(),
            best=p.best,
            updates=p.update,
            examples=p.examples,
            diverged_at=p.update,
            wall_time_s=round(wall, 3),
            time=trainer.time_summary(wall),
        )
        if ctx.is_main:
            remove_resume_state(run_dir)  # a diverged run is final: never resumed
        print(f"diverged: {err} ({run_dir})", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM (also torchrun stopping the ranks after one failed), SIGHUP
        return _interrupted(err, trainer, tracker, run_dir)
    except Exception as err:  # noqa: BLE001 - recorded, then reported as one line
        tracker.write_text("error.log", traceback.format_exc())
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        tracker.finish(FAILED, reason=reason, updates=trainer.progress.update)
        print(f"failed: {reason} (traceback in {run_dir / 'error.log'})", file=sys.stderr)
        return EXIT_FAILED
    if not ctx.is_main:
        return EXIT_OK
    f = summary.get("final", {})
    em_key, second = metric_keys(cfg.data.metric)
    split = "".join(f"  {k} {f[k]:.2f}" for k in (f"dev/has_ans_{second[4:]}", f"dev/no_ans_{second[4:]}") if k in f)
    print(
        f"completed: {run_dir}\n  {second} {f.get(second, float('nan')):.2f}  dev/em {f.get(em_key, float('nan')):.2f}"
        f"{split}  dev/loss {f.get('dev/loss', float('nan')):.4f}  train/loss {f.get('train/loss', float('nan')):.4f}"
        f"  updates {p.update}  wall {summary.get('wall_time_s', 0):.0f}s",
        file=sys.stderr,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
