"""One MRC training run: `python -m experiments.train CONFIG.yaml [CONFIG.yaml ...] [key=value ...]`

Reads top to bottom like the run itself: config → model and data (bad input fails here, before anything is written)
→ run directory (resume if a checkpoint is there) → windows of k micro-batches through `sam.train_step` → evaluation
at every epoch end and at the end → summary. With no arguments at all it runs nothing and shows how to start.

Ctrl-C (SIGINT), SIGTERM (what a cluster scheduler or the sweep runner sends) and SIGHUP end the run the same way:
summary.json says failed with the reason "interrupted by SIGTERM at update N of M" and whether a rerun of the same
command resumes (from the last resume checkpoint: train.checkpoint_every / train.checkpoint_every_minutes) or starts
over. Exit codes: 0 completed (or already complete), 1 failed, 2 bad input, 3 diverged, 128 + the signal's number when
interrupted (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import json
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
from typing import Any, Optional

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130  # 130: Ctrl-C
log = logging.getLogger("experiments.train")


class Diverged(RuntimeError):
    """The loss became NaN/inf; the run stops with status `diverged`."""


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal turned into an exception, so SIGTERM and SIGHUP end a run through the same path as Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _signal_of(err: BaseException) -> tuple[str, int]:
    """(name, number) of the signal behind a KeyboardInterrupt (a plain one is Ctrl-C: SIGINT)."""
    signum = getattr(err, "signum", signal.SIGINT)
    return signal.Signals(signum).name, int(signum)


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
# data


@dataclass
class Features:
    """Tokenised windows as tensors, loaded once (the QA sets used here fit in memory)."""

    tensors: dict  # column -> LongTensor [n, seq]
    dataset: Any = None  # the datasets.Dataset (eval: example_id, offset_mapping for post-processing)

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def batch(self, index, device) -> dict:
        return {k: v[index].to(device, non_blocking=True) for k, v in self.tensors.items()}


def to_features(dataset, columns) -> Features:
    import numpy as np
    import torch

    present = [c for c in columns if c in dataset.column_names]
    return Features({c: torch.from_numpy(np.asarray(dataset[c], dtype=np.int64)) for c in present}, dataset)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABELS = ("start_positions", "end_positions")


def epoch_windows(n_features: int, micro_batch_size: int, k: int, seed: int, epoch: int):
    """The epoch's shuffled micro-batches grouped into windows of k; the last window may be shorter.

    The order depends only on (seed, epoch), so a resumed run sees exactly the windows it would have seen.
    """
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_features, generator=generator)
    micro = list(torch.split(order, micro_batch_size))
    return [micro[i:i + k] for i in range(0, len(micro), k)]


# ----------------------------------------------------------------------------------------------------------------------
# optimizer


def build_optimizer(model, optim_cfg):
    """AdamW with no weight decay on biases and LayerNorm weights; wrapped in SAM unless replay is none.

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
    groups = [{"params": decay, "weight_decay": optim_cfg.weight_decay, "is_weight": True},
              {"params": no_decay_weights, "weight_decay": 0.0, "is_weight": True},
              {"params": biases, "weight_decay": 0.0, "is_weight": False}]
    groups = [g for g in groups if g["params"]]
    kwargs = dict(lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
    if optim_cfg.replay == "none":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "is_weight"} for g in groups], **kwargs)
    return SAM(groups, torch.optim.AdamW, rho=optim_cfg.rho, adaptive=optim_cfg.adaptive, eta=optim_cfg.eta,
               **kwargs)


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
    best: Optional[dict] = None
    last_eval: Optional[dict] = None
    last_train: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, cfg, run_dir: Path):
        import torch

        from .data import load_examples, prepare_eval_features, prepare_train_features
        from .model import load_model, load_tokenizer

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = pick_device(cfg.train.device)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        seed_everything(cfg.seed)

        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        train_ex, dev_ex, self.data_stats = load_examples(cfg.data)
        if len(train_ex) == 0 or len(dev_ex) == 0:
            raise ValueError(f"no usable examples (train {len(train_ex)}, dev {len(dev_ex)}); check data.*")
        d = cfg.data
        train_ds = prepare_train_features(train_ex, self.tokenizer, d.max_seq_length, d.doc_stride)
        dev_ds = prepare_eval_features(dev_ex, self.tokenizer, d.max_seq_length, d.doc_stride)
        self.dev_examples = dev_ex
        self.train = to_features(train_ds, MODEL_INPUTS + LABELS)
        self.dev = to_features(dev_ds, MODEL_INPUTS + LABELS)
        self.data_stats.update(train_features=len(self.train), dev_features=len(self.dev))

        seed_everything(cfg.seed)  # the new QA head (or the tiny model) is initialised from the run seed
        self.model = load_model(cfg.model, self.tokenizer).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        t = cfg.train
        self.micro_per_epoch = math.ceil(len(self.train) / t.micro_batch_size)
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / t.accumulation_steps)
        self.total_updates = t.epochs * self.updates_per_epoch
        if t.max_updates:
            self.total_updates = min(self.total_updates, t.max_updates)
        self.scheduler = linear_schedule(self.optimizer, self.total_updates, cfg.optim.warmup_ratio)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if t.precision == "fp16" else None
        self.progress = Progress()
        self.tracker = None

    # -- pieces ------------------------------------------------------------------------------------------------------
    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def loss_fn(self, batch: dict):
        with self.autocast():
            return self.model(**batch).loss

    def evaluate(self, kind: str) -> dict:
        """Dev loss (mean over THIS evaluation's features, not a running mean), EM/F1 from n-best post-processing."""
        import numpy as np
        import torch

        from .qa_eval import char_f1_scores, postprocess_predictions, squad_scores

        self.model.eval()
        bs = self.cfg.train.eval_batch_size
        total_loss, starts, ends = 0.0, [], []
        with torch.no_grad():
            for begin in range(0, len(self.dev), bs):
                index = torch.arange(begin, min(begin + bs, len(self.dev)))
                with self.autocast():
                    out = self.model(**self.dev.batch(index, self.device))
                total_loss += float(out.loss) * len(index)
                starts.append(out.start_logits.float().cpu().numpy())
                ends.append(out.end_logits.float().cpu().numpy())
        self.model.train()
        e = self.cfg.eval
        predictions = postprocess_predictions(
            self.dev_examples, self.dev.dataset, np.concatenate(starts), np.concatenate(ends),
            n_best_size=e.n_best_size, max_answer_length=e.max_answer_length,
            version_2_with_negative=self.cfg.data.version_2_with_negative,
            null_score_diff_threshold=e.null_score_diff_threshold,
        )
        references = {ex_id: list(ans["text"]) for ex_id, ans in
                      zip(self.dev_examples["id"], self.dev_examples["answers"])}
        scorer = char_f1_scores if self.cfg.data.metric == "char" else squad_scores
        scores = scorer(predictions, references)
        self.tracker.write_json("predictions.json", predictions)
        return {"dev/loss": total_loss / len(self.dev), "dev/em": scores["exact_match"], "dev/f1": scores["f1"],
                "eval/kind": kind}

    def record_eval(self, metrics: dict) -> None:
        p = self.progress
        event = dict(metrics)
        self.tracker.log(event, update=p.update, epoch=self.epoch_float(), examples=p.examples)
        snapshot = {k: metrics[k] for k in ("dev/loss", "dev/em", "dev/f1")}
        snapshot.update(update=p.update, epoch=round(self.epoch_float(), 4))
        p.last_eval = snapshot
        key = self.cfg.train.save_best_by
        better = (p.best is None or (metrics[key] < p.best["value"] if key == "dev/loss"
                                     else metrics[key] > p.best["value"]))
        if better:
            p.best = {"metric": key, "value": metrics[key], **snapshot}
            if self.cfg.train.save_model:
                from .model import save_pretrained_atomic

                save_pretrained_atomic(self.model, self.tokenizer, self.run_dir / "checkpoint" / "best")
        self.tracker.update_summary(best=p.best, final=self.final_block())
        cfg = self.cfg
        console(f"[{cfg.arm} k={cfg.train.accumulation_steps} seed={cfg.seed}] {metrics.get('eval/kind', 'eval')} "
                f"evaluation at update {p.update} (epoch {self.epoch_float():.2f}): dev/f1 {metrics['dev/f1']:.2f}  "
                f"dev/em {metrics['dev/em']:.2f}  dev/loss {metrics['dev/loss']:.4f}"
                + ("  (best so far)" if better else ""))

    def final_block(self) -> dict:
        p = self.progress
        out = dict(p.last_eval or {})
        if "train/loss" in p.last_train:
            out["train/loss"] = p.last_train["train/loss"]
        return out

    def epoch_float(self) -> float:
        p = self.progress
        return p.epoch + p.window / max(1, self.updates_per_epoch)

    def window_examples(self, windows) -> list[int]:
        """For each window of an epoch, how many training examples it reaches first in that epoch: an example counts
        once per epoch, at the window holding the first of its features (a long context gives one example several
        features, possibly in different windows), so over a whole epoch the counts add up to the number of examples
        that have features. Features carry `example_id` (experiments.data.features)."""
        import numpy as np
        import torch

        if getattr(self, "_example_index", None) is None:
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
        last = getattr(self, "_last_checkpoint", None)
        if last is None:
            self._last_checkpoint = last = now
        by_updates = bool(t.checkpoint_every) and self.progress.update % t.checkpoint_every == 0
        by_time = bool(t.checkpoint_every_minutes) and now - last >= 60.0 * t.checkpoint_every_minutes
        return by_updates or by_time

    def grad_fidelity(self, batches, sizes) -> dict:
        from .diagnostics import last_vs_full_gradient

        return last_vs_full_gradient(self.model, self.loss_fn, batches, sizes, self.optimizer.param_groups)

    # -- loop --------------------------------------------------------------------------------------------------------
    def run(self, tracker) -> None:
        import torch

        from sam import train_step

        self.tracker = tracker
        cfg, t, p = self.cfg, self.cfg.train, self.progress
        self.model.train()
        bar = ProgressBar(self.total_updates, p.update, f"{cfg.arm} k={t.accumulation_steps} seed={cfg.seed}")
        stop = p.update >= self.total_updates
        while not stop and p.epoch < t.epochs:
            windows = epoch_windows(len(self.train), t.micro_batch_size, t.accumulation_steps, cfg.seed, p.epoch)
            new_examples = self.window_examples(windows)
            while p.window < len(windows):
                index_lists = windows[p.window]
                batches = [self.train.batch(ix, self.device) for ix in index_lists]
                sizes = [len(ix) for ix in index_lists]
                reached = new_examples[p.window]  # training examples this window reaches first in the epoch
                diag = None
                if cfg.diagnostics.grad_fidelity and p.update % cfg.diagnostics.grad_fidelity_every == 0:
                    diag = self.grad_fidelity(batches, sizes)
                start = time.perf_counter()
                result = train_step(self.loss_fn, batches, self.optimizer, replay=cfg.optim.replay, sizes=sizes,
                                    max_grad_norm=cfg.optim.max_grad_norm, scaler=self.scaler,
                                    reuse_dropout_rng=cfg.optim.reuse_dropout_rng)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                step_time = time.perf_counter() - start
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                p.update += 1
                p.window += 1
                p.examples += reached
                p.step_time_total += step_time
                p.step_times.append(round(step_time, 5))
                if not math.isfinite(result.loss) or (result.skipped and self.scaler is None):
                    raise Diverged(f"non-finite loss/gradient at update {p.update} (train/loss={result.loss})")
                train_metrics = {"train/loss": result.loss, "train/grad_norm": result.grad_norm,
                                 "train/lr": lr, "train/step_time": step_time}
                if result.perturbed_loss is not None:
                    train_metrics["train/perturbed_loss"] = result.perturbed_loss
                if self.scaler is not None:
                    train_metrics["train/skipped"] = int(result.skipped)
                p.last_train = train_metrics
                if p.update % t.log_every == 0 or p.update == self.total_updates:
                    tracker.log(train_metrics, update=p.update, epoch=self.epoch_float(), examples=p.examples)
                if diag is not None:
                    tracker.log(diag, update=p.update, epoch=self.epoch_float(), examples=p.examples)
                bar.step(result.loss, p.update)
                stop = p.update >= self.total_updates
                end_of_epoch = p.window == len(windows)
                if t.eval_every and p.update % t.eval_every == 0 and not end_of_epoch and not stop:
                    self.record_eval(self.evaluate("periodic"))
                if end_of_epoch:
                    p.epoch, p.window = p.epoch + 1, 0
                    self.record_eval(self.evaluate("epoch"))  # also the final evaluation when training ends here
                elif stop:
                    self.record_eval(self.evaluate("final"))
                if not stop and self.checkpoint_due():
                    from .checkpoint import save_resume_state

                    save_resume_state(self)
                    self._last_checkpoint = time.monotonic()
                if stop:
                    break
        bar.close()
        if cfg.train.save_model:
            from .model import save_pretrained_atomic

            save_pretrained_atomic(self.model, self.tokenizer, self.run_dir / "checkpoint" / "final")


def console(line: str) -> None:
    """One line on stderr that does not tear a progress bar drawn on a terminal (tqdm.write)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class ProgressBar:
    """tqdm with loss and ETA on a terminal; plain log lines (about 20 per run) when output is a file."""

    def __init__(self, total: int, initial: int, label: str):
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty()
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
        elif update % self.every == 0 or update == self.total:
            done = update - self.initial
            rate = (time.perf_counter() - self.t0) / max(1, done)
            eta = rate * (self.total - update)
            print(f"[{self.label}] update {update}/{self.total} loss {loss:.4f} "
                  f"{rate:.2f}s/upd ETA {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------------------------------
# entry point


def prepare_run_dir(cfg, run_dir: Path) -> str:
    """Decide what to do with an existing run directory: 'new', 'resume', 'restart', 'completed' or 'diverged'.

    A directory that holds a different config is refused (ValueError); a completed run is never rerun.
    """
    from .config import config_hash

    summary_path = run_dir / "summary.json"
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    mine = config_hash(cfg)
    theirs = None
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
            theirs = summary.get("config_hash")
        except json.JSONDecodeError:
            summary = {}
    else:
        summary = {}
    if theirs is None and (run_dir / "config.yaml").exists():
        from .config import load_config

        try:
            theirs = config_hash(load_config([run_dir / "config.yaml"]))
        except Exception:
            theirs = "unreadable"
    if theirs is not None and theirs != mine:
        raise ValueError(f"run directory {run_dir} holds a different config (hash {theirs} != {mine}); "
                         f"set run_name=... or results_dir=... to run this one elsewhere")
    if summary.get("status") in ("completed", "diverged"):
        return summary["status"]  # a diverged run is a result: rerunning the same config diverges again
    if (run_dir / "checkpoint" / "resume").exists() or (run_dir / "checkpoint" / "resume.old").exists():
        return "resume"
    return "restart"


NO_ARGUMENTS = """usage: python -m experiments.train CONFIG.yaml [CONFIG.yaml ...] [key=value ...]
No arguments: nothing is run (the bare default is a full run of several minutes). For example:
  python -m experiments.train configs/smoke.yaml configs/arm/sam_full.yaml        a tiny run, about 10 s
  python -m experiments.train configs/default.yaml configs/arm/adamw.yaml         the embedded default (make run)
--help explains the arguments; README.md says what each run takes."""


def _interrupted(err: BaseException, trainer, tracker, run_dir: Path) -> int:
    """Record a run stopped by a signal: failed, with a reason that says where and whether a rerun resumes."""
    from .checkpoint import resume_point

    name, signum = _signal_of(err)
    if tracker.finished:  # the signal came after the summary was final (e.g. while the resume state was removed)
        print(f"interrupted ({name}) after the run ended {tracker.summary['status']}: {run_dir}", file=sys.stderr)
        return 128 + signum
    p, t = trainer.progress, trainer.cfg.train
    resumable = resume_point(run_dir)
    where = f"at update {p.update} of {trainer.total_updates}"
    if resumable is not None:
        outcome, advice = f"resumable from update {resumable}", "rerun the same command to resume"
    else:
        outcome = "not resumable (no resume checkpoint yet)"
        every = ", ".join(f"{k}={v}" for k, v in (("train.checkpoint_every", t.checkpoint_every),
                                                  ("train.checkpoint_every_minutes", t.checkpoint_every_minutes)))
        advice = (f"a rerun starts over; {every}: set train.checkpoint_every=N (updates) to make it resumable "
                  f"sooner")
    reason = f"interrupted by {name} {where}; {outcome}"
    tracker.write_text("error.log", traceback.format_exc())
    tracker.finish("failed", reason=reason, updates=p.update, final=trainer.final_block(), best=p.best,
                   interrupted={"signal": name, "update": p.update, "resumable_from": resumable})
    print(f"interrupted ({name}) {where}: {outcome}; {advice} ({run_dir})", file=sys.stderr)
    return 128 + signum


def main(argv: Optional[list[str]] = None) -> int:
    from .config import ConfigError, load_config, run_dir as run_dir_of, split_args

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return EXIT_OK
    if not argv:
        print(NO_ARGUMENTS, file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    files, overrides = split_args(argv)
    try:
        cfg = load_config(files, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _offline_defaults(cfg)
    run_dir = run_dir_of(cfg)
    try:
        action = prepare_run_dir(cfg, run_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if action in ("completed", "diverged"):
        print(f"already {action}: {run_dir} (delete it to run again)", file=sys.stderr)
        return EXIT_OK if action == "completed" else EXIT_DIVERGED
    if cfg.tracking.mode == "online":  # before minutes of model and data loading, not after
        from .network import PROBE_TIMEOUT_S, reachable, wandb_url

        if not reachable(wandb_url()):
            print(f"error: tracking.mode=online but the W&B server {wandb_url()} is not reachable within "
                  f"{PROBE_TIMEOUT_S:.0f} s; use tracking.mode=offline (upload later with make sync) or set "
                  "WANDB_BASE_URL", file=sys.stderr)
            return EXIT_BAD_INPUT
    touched: list = []  # _run appends once the run directory holds a summary.json of this attempt
    with stop_signals_raise():
        try:
            return _run(cfg, run_dir, action, touched)
        except KeyboardInterrupt as err:
            name, signum = _signal_of(err)
            if touched:  # a second signal while an earlier ending (diverged, failed) was being recorded
                print(f"interrupted ({name}) while the run was ending; summary.json has its status ({run_dir})",
                      file=sys.stderr)
            else:  # model and data loading: the run directory was not touched
                print(f"interrupted ({name}) during start-up, before anything was written to {run_dir}",
                      file=sys.stderr)
            return 128 + signum


def _run(cfg, run_dir: Path, action: str, touched: list) -> int:
    from .checkpoint import remove_resume_state
    from .data import DataError
    from .model import ModelError
    from .tracking import TrackingError

    try:
        trainer = Trainer(cfg, run_dir)  # model and data: bad input fails here, before the run dir is touched
    except (DataError, ModelError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from .tracking import RunTracker

    resume = False
    if action == "resume":
        from .checkpoint import load_resume_state

        resume = load_resume_state(trainer)
        if not resume:
            log.warning("resume checkpoint unusable; starting %s over", run_dir)
    if not resume and action == "restart":
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    try:
        # RunTracker writes summary.json (running) first; a signal or error while it starts W&B is recorded there
        tracker = RunTracker(cfg, run_dir, resume=resume, device=trainer.device)
    except TrackingError as err:
        print(f"failed: {err} ({run_dir})", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as err:
        name, signum = _signal_of(err)
        print(f"interrupted ({name}) during start-up (starting W&B); summary.json says so ({run_dir})",
              file=sys.stderr)
        return 128 + signum
    touched.append(run_dir)
    try:
        if resume:
            tracker.rewind(trainer.progress.update)
        from .model import count_parameters

        tracker.update_summary(data=trainer.data_stats, parameters=count_parameters(trainer.model),
                               total_updates=trainer.total_updates)
        where = f"resuming at update {trainer.progress.update}" if resume else "starting"
        print(f"{where}: {run_dir} ({trainer.total_updates} updates, {trainer.data_stats['train_features']} train "
              f"features, device {trainer.device})", file=sys.stderr)
        trainer.run(tracker)
        p = trainer.progress
        summary = tracker.finish(
            "completed", final=trainer.final_block(), best=p.best, updates=p.update, examples=p.examples,
            mean_step_time_s=round(p.step_time_total / max(1, p.update), 4),
            median_step_time_s=round(statistics.median(p.step_times), 4) if p.step_times else None,
        )
        remove_resume_state(run_dir)  # a completed run is never resumed; the checkpoint is model + optimizer state
    except Diverged as err:
        p = trainer.progress
        tracker.finish("diverged", reason=str(err), final=trainer.final_block(), best=p.best, updates=p.update,
                       examples=p.examples, diverged_at=p.update)
        remove_resume_state(run_dir)  # a diverged run is final: never resumed
        print(f"diverged: {err} ({run_dir})", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP
        return _interrupted(err, trainer, tracker, run_dir)
    except Exception as err:  # noqa: BLE001 - recorded, then reported as one line
        tracker.write_text("error.log", traceback.format_exc())
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        tracker.finish("failed", reason=reason, updates=trainer.progress.update)
        print(f"failed: {reason} (traceback in {run_dir / 'error.log'})", file=sys.stderr)
        return EXIT_FAILED
    f = summary.get("final", {})
    print(f"completed: {run_dir}\n  dev/f1 {f.get('dev/f1', float('nan')):.2f}  dev/em {f.get('dev/em', float('nan')):.2f}"
          f"  dev/loss {f.get('dev/loss', float('nan')):.4f}  train/loss {f.get('train/loss', float('nan')):.4f}"
          f"  updates {p.update}  wall {summary.get('wall_time_s', 0):.0f}s", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
