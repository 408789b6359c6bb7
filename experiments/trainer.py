"""`Trainer`: one run's model, data, optimizer and loop; windows of k micro-batches through `sam.train_step`, evaluation
and resume checkpoints on their schedule. experiments/train.py is the command line around it."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from sam import train_step
from sam.diagnostics import last_vs_full_gradient

from .batches import epoch_windows, subset_rows
from .checkpoint import save_resume_state
from .data.features import MODEL_INPUTS
from .device import pick_device, seed_everything
from .distributed import Dist, rank_seed, rank_slice, shard
from .metrics import metric as metric_row
from .model import load_model, load_tokenizer, save_pretrained_atomic
from .optim_setup import build_optimizer, linear_schedule
from .progress import Progress, ProgressBar, console
from .qa_eval import metric_keys, score_predictions
from .qa_loss import span_loss
from .qa_postprocess import postprocess_predictions
from .run_data import build_features
from .rundir import checkpoint_dir

DDP_CLOCK_EVERY = 10  # data-parallel: updates between two looks at the clock for time-based resume checkpoints
log = logging.getLogger("experiments.trainer")


class Diverged(RuntimeError):
    """The loss became NaN/inf; the run stops with status `diverged`."""


class Trainer:
    def __init__(self, cfg, run_dir: Path, dist=None):
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
        data = build_features(cfg.data, self.tokenizer, pin_memory=self.device.type == "cuda")
        self.train, self.dev, self.dev_examples, self.data_stats = data.train, data.dev, data.dev_examples, data.stats
        self.dev_subset = self._dev_subset()  # (example columns, Features) or None
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
            seed_everything(rank_seed(cfg.seed, self.dist.rank))  # each rank its own dropout masks
        self.progress = Progress()
        self.tracker = None
        self._example_index = None  # feature → example number, for window_examples (built on first use)
        self._last_checkpoint = None  # monotonic time of the last resume checkpoint (or of the first update)

    def set_model(self, model) -> None:
        """Train `model` (moved to the device): the forward modules (torch.compile, DDP), a fresh optimizer and lr
        schedule. __init__ calls it with the config's model; the training benchmark with a bert-base-size one."""
        cfg = self.cfg
        self.model = model.to(self.device)
        # the module that runs forward passes; save_pretrained and the optimizer keep using self.model
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model
        # training forwards go through DDP when torchrun started the run (evaluation and diagnostics do not: they
        # must not touch DDP's gradient synchronisation); DDP starts every rank from rank 0's weights
        self.ddp = None
        self.train_forward = self.forward
        if self.dist.enabled:
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

        subset = kind == "periodic" and self.dev_subset is not None
        examples, features = self.dev_subset if subset else (self.dev_examples, self.dev)
        self.model.eval()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        pieces = []
        batches = features.eval_batches(self.cfg.train.eval_batch_size)
        if self.dist.enabled:
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
            p.best is None or metric_row(key).improves(metrics[key], p.best["value"])
        )
        if better:
            p.best = {"metric": key, "value": metrics[key], **snapshot}
            if self.cfg.train.save_model and self.dist.is_main:
                with self.timed("checkpoint_time"):
                    save_pretrained_atomic(self.model, self.tokenizer, checkpoint_dir(self.run_dir, "best"))
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
            shortcut=o.replay_shortcut,
            **parallel,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        if not result.skipped:
            # the schedule advances on applied updates only (as HF Trainer does): an fp16 update that GradScaler
            # skipped (inf/NaN gradient) changed no weight, so the next applied one gets the lr it would have had
            self.scheduler.step()
        return result, seconds, lr

    def diagnose(self, batches, sizes) -> dict | None:
        """The gradient-fidelity diagnostic on this window, when it is due (before the update, at its weights)."""
        d = self.cfg.diagnostics
        if not d.grad_fidelity or self.progress.update % d.grad_fidelity_every or not self.dist.is_main:
            return None
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

    def evaluation_due(self, end_of_epoch: bool) -> str | None:
        """The evaluation due after this update: "epoch" at every epoch end (also the final one when training ends
        there), "final" when training ends inside an epoch, "periodic" every train.eval_every updates, else None."""
        p, t = self.progress, self.cfg.train
        if end_of_epoch:
            return "epoch"
        if p.update >= self.total_updates:
            return "final"
        if t.eval_every and p.update % t.eval_every == 0:
            return "periodic"
        return None

    def after_update(self, end_of_epoch: bool) -> None:
        """The evaluation and resume checkpoint due after this update, if any (none after the last update: the run
        is complete, and a completed run is never resumed)."""
        p = self.progress
        kind = self.evaluation_due(end_of_epoch)
        if kind is not None:
            with self.timed("eval_time"):
                metrics = self.evaluate(kind)
            p.evaluations += 1
            if metrics is not None:  # None on data-parallel ranks other than 0
                self.record_eval(metrics)
        if p.update < self.total_updates and self.checkpoint_due():
            with self.timed("checkpoint_time"):
                save_resume_state(self)
            self._last_checkpoint = time.monotonic()

    def train_window(self, window: list, reached: int):
        """One update on `window` (lists of global feature indices), its diagnostic first when due; counted in
        progress (`reached`: the examples this window reaches first in its epoch) and logged. Returns the
        StepResult; raises Diverged on a non-finite loss."""
        p = self.progress
        batches, sizes = self.window_batches(window)
        diag = self.diagnose(batches, sizes)
        result, seconds, lr = self.step(batches, sizes, [len(ix) for ix in window])
        p.update, p.window, p.examples = p.update + 1, p.window + 1, p.examples + reached
        p.skipped_updates += int(result.skipped)
        p.step_time_total += seconds
        p.step_times.append(round(seconds, 5))
        self.log_update(result, seconds, lr, diag)
        return result

    def update_counts(self) -> dict:
        """summary.json's split of `updates` (windows trained): applied_updates changed the weights and advanced the
        lr schedule, skipped_updates are fp16 updates GradScaler skipped (always 0 in fp32 and bf16)."""
        p = self.progress
        return {"applied_updates": p.update - p.skipped_updates, "skipped_updates": p.skipped_updates}

    def save_final(self) -> None:
        if self.cfg.train.save_model and self.dist.is_main:
            with self.timed("checkpoint_time"):
                save_pretrained_atomic(self.model, self.tokenizer, checkpoint_dir(self.run_dir, "final"))

    # -- loop --------------------------------------------------------------------------------------------------------
    def run(self, tracker) -> None:
        """Train from `progress` to total_updates (or the last epoch): one update per window, then what is due."""
        self.tracker = tracker
        cfg, t, p = self.cfg, self.cfg.train, self.progress
        self.model.train()
        label = f"{cfg.arm} k={t.accumulation_steps} seed={cfg.seed}"
        bar = ProgressBar(self.total_updates, p.update, label, enabled=self.dist.is_main)
        # data-parallel: the single-process order of micro-batches of world_size × micro_batch_size features
        global_micro = t.micro_batch_size * self.dist.world_size
        while p.update < self.total_updates and p.epoch < t.epochs:
            windows = epoch_windows(len(self.train), global_micro, t.accumulation_steps, cfg.seed, p.epoch)
            new_examples = self.window_examples(windows)  # examples each window reaches first this epoch
            while p.window < len(windows) and p.update < self.total_updates:
                result = self.train_window(windows[p.window], new_examples[p.window])
                bar.step(result.loss, p.update)
                end_of_epoch = p.window == len(windows)
                if end_of_epoch:
                    p.epoch, p.window = p.epoch + 1, 0
                self.after_update(end_of_epoch)
        bar.close()
        self.save_final()
