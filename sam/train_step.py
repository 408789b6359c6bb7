"""One accumulation window → one optimizer update, for every replay mode.

A window holds k micro-batches B_1..B_k with n_i examples each, N = Σ n_i, weights a_i = n_i / N, and
L(w) = Σ a_i L_i(w) is the window's mean loss. `loss_fn(B_i)` returns L_i, the mean loss of micro-batch i.

    none   g = Σ a_i ∇L_i(w)                                   AdamW with accumulation
    full   g = Σ a_i ∇L_i(w + e),  e = rho·∇L(w)/‖∇L(w)‖       SAM on the whole window (correct)
    last   g = Σ_{j=1..k} (1/k) ∇L_k(w + e),  e as in full     the copied loop: replays B_k k times
    micro  g = Σ a_i ∇L_i(w + e_i), e_i = rho·∇L_i/‖∇L_i‖      m-SAM: each micro-batch its own perturbation

Then, for every mode: clip g to `max_grad_norm` (if given) and let the base optimizer step with it.

`last` is a transcription of the loop this project studies, kept on purpose: it costs exactly what `full` costs
(k forward/backward passes at w + e) but its update direction is the SAM gradient of 1/k of the data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from .optimizer import SAM, global_grad_norm

REPLAY_MODES = ("none", "full", "last", "micro")


@dataclass
class StepResult:
    loss: float  # first pass at w, weighted mean over the window (what the model "is" before the update)
    perturbed_loss: Optional[float]  # second pass at w + e, averaged like the gradient it produced; None for none
    grad_norm: float  # ‖g‖ of the gradient the base optimizer used, unscaled, before clipping
    skipped: bool  # the update was skipped (inf/NaN gradient; with a GradScaler the scale backed off)
    first_grad_norm: Optional[float] = None  # ‖∇L(w)‖ that normalised e (micro: of the last micro-batch)


class _DropoutRng:
    """Remembers the RNG state before each micro-batch's first pass so its second pass draws the same dropout masks.

    Replaying states in order also leaves the generator where the first passes alone would have left it, so reusing
    masks does not shift the random stream of the rest of training.
    """

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.cuda = enabled and device.type == "cuda"
        self.device = device
        self.states: dict[int, tuple[Tensor, Optional[Tensor]]] = {}

    def save(self, i: int) -> None:
        if self.enabled:
            cuda_state = torch.cuda.get_rng_state(self.device) if self.cuda else None
            self.states[i] = (torch.get_rng_state(), cuda_state)

    def restore(self, i: int) -> None:
        if self.enabled:
            cpu_state, cuda_state = self.states[i]
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, self.device)


def train_step(
    loss_fn: Callable[[Any], Tensor],
    micro_batches: Sequence[Any],
    optimizer: torch.optim.Optimizer,
    *,
    replay: str,
    sizes: Optional[Sequence[int]] = None,
    max_grad_norm: Optional[float] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    reuse_dropout_rng: bool = True,
) -> StepResult:
    """Run one accumulation window and its update; see the module docstring for the gradient of each mode.

    Args:
        loss_fn: `loss_fn(batch) -> Tensor`, the *mean* loss of one micro-batch (forward only; we call backward).
            For bf16/fp16 autocast, run the forward under `torch.autocast` (inside loss_fn or around this call).
        micro_batches: the k micro-batches of the window (anything loss_fn accepts).
        optimizer: a `SAM` for full/last/micro; a plain torch optimizer (or a SAM, whose base is used) for none.
        replay: "none" | "full" | "last" | "micro".
        sizes: examples per micro-batch; each micro-batch is weighted by its share n_i/N (None: equal shares).
        max_grad_norm: clip the gradient the base optimizer uses (SAM: the second-pass gradient). Clipping before
            the perturbation would change nothing, since e = rho·g/‖g‖ is scale-free.
        scaler: a `torch.amp.GradScaler` for fp16. Both passes are scaled. e is computed from the scaled
            gradients with the norm divided by the scale (exactly the unscaled e). `GradScaler.unscale_` may be
            called once per update, so it is called exactly once, on the gradient the base optimizer uses; an
            overflow in the first pass skips the second pass and hands that (non-finite) gradient to
            `unscale_`/`step`, which records the overflow and skips, and `update()` backs the scale off.
            train_step calls `scaler.update()` itself, once per window.
        reuse_dropout_rng: the second pass of each micro-batch sees the dropout masks of its first pass (CPU RNG
            state, and the CUDA one when the parameters live on CUDA).

    Returns:
        StepResult(loss, perturbed_loss, grad_norm, skipped, first_grad_norm).
    """
    if replay not in REPLAY_MODES:
        raise ValueError(f"replay={replay!r}; choose one of {REPLAY_MODES}")
    k = len(micro_batches)
    if k == 0:
        raise ValueError("an accumulation window needs at least one micro-batch")
    if replay != "none" and not isinstance(optimizer, SAM):
        raise TypeError(f"replay={replay!r} needs a sam.SAM optimizer, got {type(optimizer).__name__}")
    if sizes is not None and (len(sizes) != k or any(n <= 0 for n in sizes)):
        raise ValueError(f"sizes must hold {k} positive counts, got {list(sizes)}")
    # (loss * n_i) / N: with sizes=None this is loss * 1 / k, bitwise the loss / k of the copied loop
    numerators, denominator = (list(sizes), sum(sizes)) if sizes is not None else ([1] * k, k)

    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")
    rng = _DropoutRng(reuse_dropout_rng and replay != "none", device)
    grad_scale = scaler.get_scale() if scaler is not None else None

    def backward(loss: Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def forward_backward(i: int, batch: Any, weight_num: int, weight_den: int) -> Tensor:
        loss = loss_fn(batch)
        backward(loss * weight_num / weight_den)
        return loss.detach()

    optimizer.zero_grad(set_to_none=True)
    first_losses: list[Tensor] = []
    second_losses: list[Tensor] = []
    first_norm: Optional[Tensor] = None

    if replay == "micro":
        accumulated: dict[Tensor, Tensor] = {}
        for i, batch in enumerate(micro_batches):
            rng.save(i)
            first_losses.append(forward_backward(i, batch, numerators[i], denominator))
            first_norm = optimizer.first_step(grad_scale=grad_scale)  # e_i from this micro-batch alone
            if not optimizer.is_perturbed:
                break  # non-finite gradient: hand it to _update, which skips
            optimizer.zero_grad(set_to_none=True)
            rng.restore(i)
            second_losses.append(forward_backward(i, batch, numerators[i], denominator))
            optimizer.restore()
            # move this micro-batch's ∇L_i(w + e_i) aside (no copy for the first) so the next first pass starts clean
            fresh = [p for p in params if p.grad is not None]
            old = [p for p in fresh if p in accumulated]
            if old:
                torch._foreach_add_([accumulated[p] for p in old], [p.grad for p in old])
            for p in fresh:
                accumulated.setdefault(p, p.grad)
                p.grad = None
        else:
            for p, g in accumulated.items():
                p.grad = g
    else:
        for i, batch in enumerate(micro_batches):
            rng.save(i)
            first_losses.append(forward_backward(i, batch, numerators[i], denominator))
        if replay != "none":
            first_norm = optimizer.first_step(grad_scale=grad_scale)
            if optimizer.is_perturbed:
                optimizer.zero_grad(set_to_none=True)
                if replay == "full":
                    for i, batch in enumerate(micro_batches):
                        rng.restore(i)
                        second_losses.append(forward_backward(i, batch, numerators[i], denominator))
                else:  # "last": `for _ in range(k): (loss(B_k) / k).backward()`, as the copied loop does
                    for _ in range(k):
                        rng.restore(k - 1)
                        second_losses.append(forward_backward(k - 1, micro_batches[-1], 1, k))
                optimizer.restore()

    grad_norm, skipped = _update(optimizer, params, max_grad_norm, scaler)

    loss = sum(l.double() * n for l, n in zip(first_losses, numerators)) / sum(numerators[: len(first_losses)])
    perturbed = None
    if second_losses:
        if replay == "last":
            perturbed = torch.stack([l.double() for l in second_losses]).mean()
        else:
            used = numerators[: len(second_losses)]
            perturbed = sum(l.double() * n for l, n in zip(second_losses, used)) / sum(used)
    numbers = torch.stack([t.detach().double().cpu() for t in (loss, grad_norm)
                           + ((perturbed,) if perturbed is not None else ())
                           + ((first_norm,) if first_norm is not None else ())]).tolist()
    return StepResult(
        loss=numbers[0],
        grad_norm=numbers[1],
        perturbed_loss=numbers[2] if perturbed is not None else None,
        first_grad_norm=numbers[-1] if first_norm is not None else None,
        skipped=skipped,
    )


def _update(optimizer, params, max_grad_norm, scaler) -> tuple[Tensor, bool]:
    """Unscale (once), measure, clip and step with the gradient now in `.grad`; skip on inf/NaN."""
    base = optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer
    if scaler is not None:
        scaler.unscale_(base)
    with_grad = [p for p in params if p.grad is not None]
    if max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(with_grad, max_grad_norm, foreach=True)
    else:
        grad_norm = global_grad_norm([p.grad for p in with_grad])
    finite = bool(torch.isfinite(grad_norm))
    if scaler is not None:
        scaler.step(base)  # skips by itself when unscale_ found inf/NaN
        scaler.update()
    elif finite:
        base.step()
    if isinstance(optimizer, SAM):
        optimizer.mark_stepped()
    return grad_norm, not finite
