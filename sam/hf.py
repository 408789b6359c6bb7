"""SAM inside a Hugging Face `transformers.Trainer`, correct under `gradient_accumulation_steps` ≥ 1.

    from sam.hf import SAMTrainer

    trainer = SAMTrainer(model=model, args=TrainingArguments(..., gradient_accumulation_steps=4), ..., rho=0.05)
    trainer.train()

The only module of `sam` that imports transformers (`import sam` stays torch-only; import this one by name).

How it hooks into the Trainer (transformers 5.x, `Trainer._run_epoch`): each accumulation window of k micro-batches
is prefetched with `get_batch_samples`, which also counts `num_items_in_batch` over the whole window; every
micro-batch but the last runs `training_step` inside `accelerator.no_sync`; after the last one the Trainer clips,
steps its optimizer and scheduler and zeroes the gradients. SAMTrainer keeps the window that `get_batch_samples`
returned and, with `replay="full"`:

    micro-batches 1..k-1   the Trainer's own first pass (∇ accumulates, no all-reduce)
    micro-batch k          first pass (DDP: the one all-reduce of ∇L(w)); e = rho·∇L(w)/‖∇L(w)‖ from the accumulated
                           gradient; save w, move to w + e, zero the gradients; replay the whole window through
                           `Trainer.training_step(model, B_i, num_items_in_batch)` (B_1..B_{k-1} inside no_sync,
                           forward included; B_k synchronising), each with its first pass's dropout masks; restore w
                           by copy. The Trainer then clips and steps with Σ a_i ∇L_i(w + e).

Because the replay calls the Trainer's own `training_step`/`compute_loss` with the window's `num_items_in_batch`,
every micro-batch's loss is scaled in the second pass exactly as in the first (by the window's token count for
token-level losses, by 1/k for per-batch means), and the Trainer's optimizer, scheduler, clipping (of the
second-pass gradient), logging (of the first-pass loss), checkpointing and fp16 GradScaler stay its own.

Modes (the formulas of sam/train_step.py, whose `train_step` each equals on the same windows; tests/test_sam_hf.py):

    full       g = Σ a_i ∇L_i(w + e),   e = rho·∇L(w)/‖∇L(w)‖                          SAM on the window (correct)
    micro      g = Σ a_i ∇L_i(w + e_i), e_i = rho·∇L_i(w)/‖∇L_i(w)‖                  m-SAM per micro-batch
    last       g = Σ_{j=1..k} (1/k) ∇L_k(w + e), e as in full                        the blog's loop (the bug)
    last_only  g = ∇L_k(w + e_k),       e_k = rho·∇L_k(w)/‖∇L_k(w)‖                  the public Trainer pattern

The perturbation is `sam.optimizer`'s (`_climb` / `_restore`, the move to w + e and back that `SAM.first_step` uses), so
ASAM (`adaptive=True`) is exactly `sam.SAM`'s: T = |w| + eta for a weight (ndim ≥ 2, or a param group of the
Trainer's optimizer with `is_weight=True`), T = 1 for a bias.

fp16 (the Trainer's GradScaler): both passes backpropagate the scaled loss; e is computed from the scaled gradient
with the norm divided by the scale (exactly the unscaled e); SAMTrainer never unscales: the Trainer's clipping
unscales once, on the second-pass gradient. A non-finite first-pass gradient (an fp16 overflow) leaves the weights
unperturbed and skips the replay: that gradient goes to the Trainer's step, where the GradScaler skips the update and
backs the scale off (without a GradScaler the Trainer does with it what a plain Trainer does).

Refused with one line (untested here): DeepSpeed (accelerate steps the optimizer inside `backward`), FSDP, and
context/sequence/tensor parallelism (`parallelism_config`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor
from transformers import Trainer

from .optimizer import ETA, SAM, _climb, _restore
from .train_step import PERTURBATIONS, _DropoutRng

HF_REPLAY_MODES = ("full", "micro", "last", "last_only")


def unsupported_setup(args: Any, accelerator: Any = None) -> str | None:
    """Why SAMTrainer refuses `args` (a TrainingArguments) or the accelerator built from it, in one line; None when
    the set-up is one SAMTrainer is tested on (one process or DDP, fp32/bf16/fp16)."""
    if getattr(args, "deepspeed", None) or (
        accelerator is not None and getattr(accelerator.state, "deepspeed_plugin", None) is not None
    ):
        return "SAMTrainer does not support DeepSpeed (its engine steps the optimizer inside backward): use DDP"
    if getattr(args, "fsdp", None) or (
        accelerator is not None and getattr(accelerator.state, "fsdp_plugin", None) is not None
    ):
        return "SAMTrainer does not support FSDP (untested: sharded gradients and weights): use DDP"
    pc = getattr(args, "parallelism_config", None)
    if accelerator is not None and pc is None:
        pc = getattr(accelerator, "parallelism_config", None)
    if pc is not None and any(getattr(pc, f"{kind}_enabled", False) for kind in ("cp", "sp", "tp")):
        return "SAMTrainer does not support context/sequence/tensor parallelism (parallelism_config): use DDP"
    return None


class SAMTrainer(Trainer):
    """A `transformers.Trainer` whose update is SAM over the whole accumulation window (or a named variant).

    Args (keyword-only, after the Trainer's own):
        rho: radius of the neighbourhood (>= 0). Default: 0.05.
        adaptive: ASAM, e = rho·T²g/‖Tg‖ (Kwon et al. 2021), T as in `sam.SAM`. Default: False.
        eta: ASAM's eta (>= 0). Default: 0.01.
        replay: "full" | "micro" | "last" | "last_only" (module docstring). "none" is refused: plain accumulation is
            the plain `Trainer`. Default: "full".
        perturbation: under DDP with replay="full": "global" (e from the all-reduced window gradient, the same on
            every rank: equals one process on the global window; 2 gradient all-reduces per window) or "per_rank"
            (each rank's e from its own gradient, the first pass entirely inside no_sync: 1 all-reduce).
            Default: "global".
        reuse_dropout_rng: each micro-batch's second pass draws the dropout masks of its first pass (CPU RNG state,
            and the CUDA one on CUDA). Default: True.

    The Trainer's optimizer is a plain one (AdamW, SGD, ... from `args.optim` or `optimizers=`), not `sam.SAM`:
    SAMTrainer does the perturbation itself and the Trainer steps.

    Raises:
        ValueError: unknown or refused replay/perturbation, rho or eta < 0, an unsupported set-up
            (`unsupported_setup`). TypeError: a `sam.SAM` as the Trainer's optimizer.
    """

    def __init__(
        self,
        model=None,
        args=None,
        *trainer_args,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = ETA,
        replay: str = "full",
        perturbation: str = "global",
        reuse_dropout_rng: bool = True,
        **trainer_kwargs,
    ):
        if replay == "none":
            raise ValueError("SAMTrainer(replay='none') is plain accumulation: use transformers.Trainer itself")
        if replay not in HF_REPLAY_MODES:
            raise ValueError(f"SAMTrainer: replay={replay!r}; choose one of {HF_REPLAY_MODES}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"SAMTrainer: perturbation={perturbation!r}; choose one of {PERTURBATIONS}")
        if perturbation == "per_rank" and replay != "full":
            raise ValueError(f"SAMTrainer: perturbation='per_rank' applies to replay='full' only (got {replay!r})")
        if rho < 0.0 or eta < 0.0:
            raise ValueError(f"SAMTrainer: rho and eta must be >= 0, got rho={rho}, eta={eta}")
        # before the Trainer builds an accelerator from a set-up we refuse anyway
        if args is not None and (reason := unsupported_setup(args)):
            raise ValueError(reason)
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        if reason := unsupported_setup(self.args, self.accelerator):  # e.g. set by `accelerate launch --config`
            raise ValueError(reason)
        if isinstance(self.optimizer, SAM):
            raise TypeError("SAMTrainer perturbs by itself: give it the base optimizer (e.g. AdamW), not sam.SAM")
        self.rho, self.adaptive, self.eta = rho, adaptive, eta
        self.replay, self.perturbation, self.reuse_dropout_rng = replay, perturbation, reuse_dropout_rng
        self._window: list = []  # the current window's micro-batches, as get_batch_samples returned them
        self._position = 0  # index in the window of the micro-batch the next training_step gets
        self._rng = _DropoutRng(False, torch.device("cpu"))
        self._micro_sum: dict[Tensor, Tensor] = {}  # micro: Σ a_i ∇L_i(w + e_i) of the micro-batches done so far
        self._perturbed: list[Tensor] = []  # parameters now at w + e
        self._saved: dict[Tensor, Tensor] = {}  # persistent buffers holding w while perturbed

    # ------------------------------------------------------------------------------------------------------------------
    # the Trainer's hooks

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's window (and its `num_items_in_batch`), kept for the replay."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window, self._position, self._micro_sum = batch_samples, 0, {}
        self._rng = _DropoutRng(self.reuse_dropout_rng, self.args.device)
        return batch_samples, num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One micro-batch of the window; on the last one (every one for micro/last_only) the SAM passes. Returns the
        first-pass loss as the plain Trainer would (what it logs)."""
        i = self._position
        if i >= len(self._window) or self._window[i] is not inputs:
            raise RuntimeError(
                "SAMTrainer.training_step was handed a micro-batch that is not the next one of the window from "
                "get_batch_samples (a Trainer whose loop SAMTrainer does not know, or a direct call)"
            )
        self._position += 1
        step = {"full": self._full, "micro": self._micro, "last": self._last, "last_only": self._last_only}
        try:
            return step[self.replay](model, inputs, num_items_in_batch, i, len(self._window))
        finally:
            self._restore()  # never leave the weights at w + e, also when a pass raised

    # ------------------------------------------------------------------------------------------------------------------
    # one method per replay mode

    def _full(self, model, inputs, num_items_in_batch, i, k) -> Tensor:
        """e = rho·∇L(w)/‖∇L(w)‖ (per_rank: each rank's own), then the window replayed at w + e."""
        self._rng.save(i)
        if i < k - 1:
            return super().training_step(model, inputs, num_items_in_batch)  # the Trainer's no_sync is around us
        per_rank = self.perturbation == "per_rank" and self._distributed(model)
        with self._no_sync(model) if per_rank else contextlib.nullcontext():
            loss = super().training_step(model, inputs, num_items_in_batch)
        perturbed = self._perturb()
        # per_rank: another rank may have perturbed; a rank with a non-finite gradient replays at w with that gradient
        # kept, so the replay's all-reduce hands it to every rank and the GradScaler skips on all of them
        if perturbed or per_rank:
            if perturbed:
                model.zero_grad(set_to_none=True)
            for j, batch in enumerate(self._window):
                self._rng.restore(j)
                with self._no_sync(model) if j < k - 1 else contextlib.nullcontext():
                    super().training_step(model, batch, num_items_in_batch)
        return loss

    def _last(self, model, inputs, num_items_in_batch, i, k) -> Tensor:
        """e as in full, then B_k replayed k times, each weighted 1/k (the blog's loop). Under DDP the replays of the
        Trainer's syncing: 1..k-1 inside no_sync, so 2 all-reduces (train_step's `last`, a copy of that loop wrapped
        in DDP, synchronises all 2k backwards; the gradient is the same)."""
        self._rng.save(i)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if i < k - 1 or not self._perturb():
            return loss
        model.zero_grad(set_to_none=True)
        # each replay is (L_k / k): the Trainer divides a per-batch mean by k itself; a token-level loss is divided
        # by the count it is given, so give it k × (B_k's count)
        replay_items = None if num_items_in_batch is None else k * self._count_items(inputs)
        for j in range(k):
            self._rng.restore(i)
            with self._no_sync(model) if j < k - 1 else contextlib.nullcontext():
                super().training_step(model, inputs, replay_items)
        return loss

    def _last_only(self, model, inputs, num_items_in_batch, i, k) -> Tensor:
        """The public pattern on every micro-batch: zero the gradients, first pass, perturb from it, second pass,
        restore. Whatever micro-batch k leaves, ∇L_k(w + e_k), is what the Trainer steps with; the k − 1 earlier
        SAM gradients are zeroed (computed all the same: they are what the pattern costs). Each micro-batch is
        weighted as the mean loss of that micro-batch alone (scale 1, as train_step's last_only: g = ∇L_k(w + e_k)).
        A copy of the pattern that keeps the Trainer's loss / gradient_accumulation_steps steps with g / k instead:
        the same direction (sam.audit names both last_only and reports the scale)."""
        model.zero_grad(set_to_none=True)
        self._rng.save(i)
        items = None if num_items_in_batch is None else self._count_items(inputs)
        with self._one_micro_batch_weight():
            loss = super().training_step(model, inputs, items)
            if self._perturb():
                model.zero_grad(set_to_none=True)
                self._rng.restore(i)
                super().training_step(model, inputs, items)
        # report the first-pass loss as the plain Trainer would have: micro-batch i's share of the window
        share = 1.0 / k if num_items_in_batch is None else items / num_items_in_batch
        return loss * share

    def _micro(self, model, inputs, num_items_in_batch, i, k) -> Tensor:
        """e_i = rho·∇L_i(w)/‖∇L_i(w)‖ per micro-batch; Σ a_i ∇L_i(w + e_i) is summed aside and rides on the last
        micro-batch's second backward, the one that synchronises (DDP: 1 all-reduce per window)."""
        final = i == k - 1
        self._rng.save(i)
        # the first pass of B_i must start from zero gradients: what .grad holds is the earlier second passes' sum
        self._stash_gradients(model)
        with self._no_sync(model) if final else contextlib.nullcontext():
            loss = super().training_step(model, inputs, num_items_in_batch)  # a_i ∇L_i(w)
        # a non-finite a_i ∇L_i(w) is kept (not zeroed) and joins the sum: the GradScaler skips the whole update
        if self._perturb():
            model.zero_grad(set_to_none=True)
        if final:
            self._unstash_gradients(model)
        self._rng.restore(i)
        super().training_step(model, inputs, num_items_in_batch)  # a_i ∇L_i(w + e_i); final: synchronises
        return loss

    # ------------------------------------------------------------------------------------------------------------------
    # what the modes share

    def _perturb(self) -> bool:
        """Save w and move every parameter of the Trainer's optimizer that has a gradient to w + e, e from the
        gradient now in `.grad` by `sam.SAM`'s rule. False (nothing moved) when no parameter has a gradient or ‖g‖ is
        not finite. The gradient may carry the GradScaler's scale: the norm is divided by it, nothing is unscaled."""
        scaler = getattr(self.accelerator, "scaler", None)
        inv_scale = 1.0 if scaler is None or not scaler.is_enabled() else 1.0 / scaler.get_scale()
        groups = [
            {
                "params": group["params"],
                "rho": self.rho,
                "adaptive": self.adaptive,
                "eta": self.eta,
                "is_weight": group.get("is_weight"),
            }
            for group in self.optimizer.param_groups
        ]
        self._perturbed, _ = _climb(groups, self._saved, inv_scale)
        return bool(self._perturbed)

    def _restore(self) -> None:
        """Put every perturbed parameter back to its saved w (a copy, bitwise; never w + e - e)."""
        _restore(self._perturbed, self._saved)
        self._perturbed = []

    def _stash_gradients(self, model) -> None:
        for p in model.parameters():
            if p.grad is not None:
                if p in self._micro_sum:
                    self._micro_sum[p].add_(p.grad)
                else:
                    self._micro_sum[p] = p.grad
                p.grad = None

    def _unstash_gradients(self, model) -> None:
        for p, g in self._micro_sum.items():
            p.grad = g if p.grad is None else p.grad.add_(g)
        self._micro_sum = {}

    def _count_items(self, inputs) -> Any:
        """num_items_in_batch of micro-batch `inputs` alone, counted by the Trainer's own rule (label tokens, summed
        over the ranks when `average_tokens_across_devices`)."""
        return self._get_num_items_in_batch([inputs], self.args.device)

    @contextlib.contextmanager
    def _one_micro_batch_weight(self):
        """A per-batch-mean loss weighted 1 instead of 1/k: the Trainer divides it by this attribute."""
        saved = self.current_gradient_accumulation_steps
        self.current_gradient_accumulation_steps = 1
        try:
            yield
        finally:
            self.current_gradient_accumulation_steps = saved

    def _no_sync(self, model):
        # DDP decides in the forward whether the backward all-reduces: forward and backward both sit inside
        return self.accelerator.no_sync(model)

    @staticmethod
    def _distributed(model) -> bool:
        return isinstance(model, torch.nn.parallel.DistributedDataParallel)
