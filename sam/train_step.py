"""One accumulation window → one optimizer update, for every replay mode.

A window holds k micro-batches B_1..B_k with n_i examples each, N = Σ n_i, weights a_i = n_i / N, and
L(w) = Σ a_i L_i(w) is the window's mean loss. `loss_fn(B_i)` returns L_i, the mean loss of micro-batch i.

    none   g = Σ a_i ∇L_i(w)                                   AdamW with accumulation
    full   g = Σ a_i ∇L_i(w + e),  e = rho·∇L(w)/‖∇L(w)‖       SAM on the whole window (correct)
    last   g = Σ_{j=1..k} (1/k) ∇L_k(w + e),  e as in full     the copied loop: replays B_k k times
    micro  g = Σ a_i ∇L_i(w + e_i), e_i = rho·∇L_i/‖∇L_i‖      m-SAM: each micro-batch its own perturbation
    last_only  g = ∇L_k(w + e_k), e_k = rho·∇L_k(w)/‖∇L_k(w)‖   SAM on the last micro-batch alone: the public
                                                               Trainer pattern (k SAM steps, k − 1 zeroed away)

Then, for every mode: clip g to `max_grad_norm` (if given) and let the base optimizer step with it.

`last` is a transcription of the loop this project studies, kept on purpose: it costs exactly what `full` costs
(k forward/backward passes at w + e) but its update direction is the SAM gradient of 1/k of the data.
`last_only` is the other copied shape, a `Trainer.training_step` override that zeroes the gradients at its start and
runs first pass, perturbation and second pass on the micro-batch it is handed: under accumulation every micro-batch's
SAM gradient but the last is zeroed before the optimizer steps. It is transcribed as literally, at the same 2k passes.

Data-parallel (`ddp=` a torch DistributedDataParallel module, W processes): the window is W × k micro-batches,
B_{r,i} = rank r's slice of global micro-batch i with n_{r,i} examples, n_i = Σ_r n_{r,i}, N = Σ_i n_i, and
L = Σ_{r,i} (n_{r,i}/N) L_{r,i}. DDP averages the ranks' gradients (÷ W), so rank r weights micro-batch i by
W·n_{r,i}/N and the average is Σ_{r,i} (n_{r,i}/N) ∇L_{r,i}. A backward synchronises (all-reduces) only when its
forward ran outside `ddp.no_sync()` (PyTorch's DDP decides in the forward; davda54/sam issue #78 is what happens
when only the backward sits inside). Per window:

    none                  g as above at w; all-reduce on the last backward only                         1 all-reduce
    full, global          e from the all-reduced ∇L(w), the same on every rank; g = Σ (n_{r,i}/N) ∇L_{r,i}(w + e)
                          = single-process `full` on the whole W·k-micro-batch window                 2 all-reduces
    full, per_rank        e_r = rho·∇L^r(w)/‖∇L^r(w)‖ from rank r's own part L^r = Σ_i (n_{r,i}/N_r) L_{r,i}
                          (N_r = Σ_i n_{r,i}); g = Σ_{r,i} (n_{r,i}/N) ∇L_{r,i}(w + e_r)  (m-SAM per rank)  1 all-reduce
    last                  the copied loop wrapped in DDP, every backward synchronising: e as in full/global,
                          g = Σ_r (n_{r,k}/n_k) ∇L_{r,k}(w + e) = ∇L_k(w + e) of global micro-batch k     2k all-reduces
    micro                 e_{r,i} from ∇L_{r,i}(w) alone; g = Σ_{r,i} (n_{r,i}/N) ∇L_{r,i}(w + e_{r,i})  1 all-reduce
    last_only             the Trainer pattern under DDP (micro-batches 1..k−1 inside no_sync): e_k from the
                          all-reduced ∇L_k(w) of global micro-batch k, g = Σ_r (n_{r,k}/n_k) ∇L_{r,k}(w + e_k)
                                                                                                    2 all-reduces

plus one all-reduce of three numbers for the reported losses and norm. A rank whose slice of a micro-batch is empty
passes any batch with size 0 (weight 0), so that every rank runs the same passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .optimizer import SAM, global_grad_norm

REPLAY_MODES = ("none", "full", "last", "micro", "last_only")
PERTURBATIONS = ("global", "per_rank")  # data-parallel `full`: one e for all ranks, or each rank its own


@dataclass
class StepResult:
    loss: float  # first pass at w, weighted mean over the window (what the model "is" before the update)
    perturbed_loss: float | None  # second pass at w + e, averaged like the gradient it produced; None for none
    grad_norm: float  # ‖g‖ of the gradient the base optimizer used, unscaled, before clipping
    skipped: bool  # the update was skipped (inf/NaN gradient; with a GradScaler the scale backed off)
    first_grad_norm: float | None = None  # ‖∇L(w)‖ that normalised e (micro: of the last micro-batch)


class _DropoutRng:
    """Remembers the RNG state before each micro-batch's first pass so its second pass draws the same dropout masks.

    Replaying states in order also leaves the generator where the first passes alone would have left it, so reusing
    masks does not shift the random stream of the rest of training.
    """

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.cuda = enabled and device.type == "cuda"
        self.device = device
        self.states: dict[int, tuple[Tensor, Tensor | None]] = {}

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
    sizes: Sequence[int] | None = None,
    max_grad_norm: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    reuse_dropout_rng: bool = True,
    ddp: torch.nn.parallel.DistributedDataParallel | None = None,
    perturbation: str = "global",
    global_sizes: Sequence[int] | None = None,
    shortcut: bool = False,
) -> StepResult:
    """Run one accumulation window and its update; see the module docstring for the gradient of each mode.

    Args:
        loss_fn: `loss_fn(batch) -> Tensor`, the *mean* loss of one micro-batch (forward only; we call backward).
            For bf16/fp16 autocast, run the forward under `torch.autocast` (inside loss_fn or around this call).
            With `ddp`, loss_fn must run the forward through the DDP module (that is where DDP hooks in).
        micro_batches: the k micro-batches of the window (anything loss_fn accepts); with `ddp`, this rank's slices
            of the k global micro-batches.
        optimizer: a `SAM` for full/last/micro/last_only; a plain torch optimizer (or a SAM, whose base is used)
            for none.
        replay: "none" | "full" | "last" | "micro" | "last_only".
        sizes: examples per micro-batch; each micro-batch is weighted by its share n_i/N (None: equal shares).
            With `ddp`: this rank's n_{r,i}; 0 marks a placeholder batch (the rank's slice is empty) that takes part
            in the passes with weight 0.
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
        ddp: the `torch.nn.parallel.DistributedDataParallel` wrapping the model (its process group must be
            initialised); None for one process. Every rank must call train_step with the same replay,
            perturbation, k and global_sizes.
        perturbation: with `ddp` and replay="full": "global" (e from the all-reduced window gradient; equals
            single-process full on the global window) or "per_rank" (each rank's e from its own gradient, as the SAM
            paper's per-accelerator m-SAM). Without `ddp` the two are the same algorithm.
        global_sizes: with `ddp` and `sizes`: n_i = examples of global micro-batch i over all ranks (> 0).
        shortcut: compute the bug modes' update without their wasted passes (one process only; other modes ignore
            it). `last`: one backward of B_k at w + e with k times the weight instead of k identical replays (the
            same dropout masks each time, so this needs reuse_dropout_rng): the same gradient up to float rounding.
            `last_only`: micro-batches 1..k−1 run their first forward only, under no_grad, for the reported loss
            and to draw the dropout masks the literal loop draws; their backward and SAM step, which the literal
            loop zeroes, are skipped: bitwise the literal update. The literal loop (False) is the reference and
            the cost the copied code pays.

    Returns:
        StepResult(loss, perturbed_loss, grad_norm, skipped, first_grad_norm); with `ddp`, losses over the whole
        global window (identical on every rank), first_grad_norm of per_rank/micro averaged over the ranks.

    Raises:
        ValueError: unknown replay or perturbation, empty window, bad sizes/global_sizes, perturbation="per_rank"
            with a replay other than full, shortcut=True with ddp (or for last without reuse_dropout_rng).
            TypeError: a SAM mode with a plain optimizer.
    """
    _check_arguments(micro_batches, optimizer, replay, sizes, ddp, perturbation, global_sizes)
    if shortcut and replay in _SHORTCUTS:
        if ddp is not None:
            raise ValueError(f"shortcut=True is for one process; replay={replay!r} under DDP runs the literal loop")
        if replay == "last" and not reuse_dropout_rng:
            raise ValueError(
                "shortcut=True with replay='last' needs reuse_dropout_rng=True: without it the k replays draw "
                "different dropout masks and are not one replay k times"
            )
    window = _Window(
        loss_fn, micro_batches, optimizer, replay, sizes, scaler, reuse_dropout_rng, ddp, perturbation, global_sizes
    )
    optimizer.zero_grad(set_to_none=True)
    mode = _SHORTCUTS[replay] if shortcut and replay in _SHORTCUTS else _MODES[replay]
    passes = mode(window, optimizer)
    grad_norm, skipped = _update(optimizer, window.params, max_grad_norm, scaler)
    if ddp is not None:
        return _reduced_result(window, replay, passes, grad_norm, skipped)
    return _result(window, replay, passes, grad_norm, skipped)


# ----------------------------------------------------------------------------------------------------------------------
# one function per row of the module docstring's table


@dataclass
class _Passes:
    """The detached losses of a window's passes, in order, and the norm ‖∇L(w)‖ that normalised e (None for none)."""

    first: list[Tensor] = field(default_factory=list)  # at w
    second: list[Tensor] = field(default_factory=list)  # at w + e (empty for none, or when the update is skipped)
    first_norm: Tensor | None = None


def _none(w: _Window, optimizer: torch.optim.Optimizer) -> _Passes:
    """g = Σ a_i ∇L_i(w): AdamW with accumulation (DDP: all-reduce on the last backward)."""
    return _Passes(first=w.first_passes(sync_each=False))


def _full(w: _Window, optimizer: SAM) -> _Passes:
    """e = rho·∇L(w)/‖∇L(w)‖ (DDP per_rank: each rank's e_r from its own part), g = Σ a_i ∇L_i(w + e)."""
    passes = _Passes(first=w.first_passes(sync_each=False))
    passes.first_norm = optimizer.first_step(grad_scale=w.norm_scale)
    # per_rank: the ranks' decisions can differ, so a rank with a non-finite gradient runs the second pass anyway
    # (at w) with that gradient kept: the all-reduce hands it to every rank and all skip together
    if optimizer.is_perturbed or w.per_rank:
        if optimizer.is_perturbed:
            optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(w.batches):
            w.rng.restore(i)
            passes.second.append(w.forward_backward(batch, w.numerators[i], w.denominator, sync=i == w.k - 1))
        optimizer.restore()
    return passes


def _last(w: _Window, optimizer: SAM) -> _Passes:
    """e as in full, g = Σ_{j=1..k} (1/k) ∇L_k(w + e): the copied loop, `for _ in range(k): (loss(B_k) / k).backward()`
    (DDP: every backward synchronises, as the copied loop wrapped in DDP does)."""
    passes = _Passes(first=w.first_passes(sync_each=True))
    passes.first_norm = optimizer.first_step(grad_scale=w.norm_scale)
    if optimizer.is_perturbed:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(w.k):
            w.rng.restore(w.k - 1)
            passes.second.append(w.forward_backward(w.batches[-1], w.last_numerator, w.last_denominator))
        optimizer.restore()
    return passes


def _micro(w: _Window, optimizer: SAM) -> _Passes:
    """e_i = rho·∇L_i(w)/‖∇L_i(w)‖, g = Σ a_i ∇L_i(w + e_i): m-SAM, each micro-batch its own perturbation.

    Each micro-batch's ∇L_i(w + e_i) is moved aside before the next first pass, which must start from clean
    gradients; the sum goes back into `.grad` at the end (DDP: it rides on the one backward that all-reduces)."""
    passes = _Passes()
    params, ddp, k = w.params, w.ddp, w.k
    accumulated: dict[Tensor, Tensor] = {}
    stopped = False
    for i, batch in enumerate(w.batches):
        final = i == k - 1
        w.rng.save(i)
        passes.first.append(w.forward_backward(batch, w.numerators[i], w.denominator, sync=False))
        passes.first_norm = optimizer.first_step(grad_scale=w.norm_scale)  # e_i from this micro-batch alone
        if optimizer.is_perturbed:
            optimizer.zero_grad(set_to_none=True)
        elif ddp is None:
            stopped = True
            break  # non-finite gradient: hand it to _update, which skips
        # (DDP: a non-finite gradient stays in .grad, joins the sum and reaches every rank through the
        # all-reduce, so all ranks skip together; leaving the loop here would leave the others waiting)
        if ddp is not None and final:
            # the sum of the earlier micro-batches rides on the one backward that all-reduces
            for p, g in accumulated.items():
                p.grad = g if p.grad is None else p.grad.add_(g)
            accumulated = {}
        w.rng.restore(i)
        passes.second.append(w.forward_backward(batch, w.numerators[i], w.denominator, sync=final))
        optimizer.restore()
        if ddp is not None and final:
            break
        # move this micro-batch's ∇L_i(w + e_i) aside (no copy for the first) so the next first pass starts clean
        fresh = [p for p in params if p.grad is not None]
        old = [p for p in fresh if p in accumulated]
        if old:
            torch._foreach_add_([accumulated[p] for p in old], [p.grad for p in old])
        for p in fresh:
            accumulated.setdefault(p, p.grad)
            p.grad = None
    if not stopped:
        for p, g in accumulated.items():
            p.grad = g
    return passes


def _last_only(w: _Window, optimizer: SAM) -> _Passes:
    """e_k = rho·∇L_k(w)/‖∇L_k(w)‖, g = ∇L_k(w + e_k): SAM on micro-batch k alone, run as the public Trainer pattern
    runs it: for every micro-batch j, zero the gradients, first pass, perturb, second pass, restore; the base
    optimizer then steps with whatever survived, the SAM gradient of micro-batch k (DDP: j < k inside no_sync, as the
    Trainer runs them). The k − 1 discarded SAM steps are computed all the same: they are what the pattern costs."""
    passes = _Passes()
    for j, batch in enumerate(w.batches):
        final = j == w.k - 1
        # micro-batch k is weighted as the mean loss of (global) micro-batch k, the others as in the window: their
        # gradients are zeroed anyway
        num, den = (w.last_only_numerator, w.last_only_denominator) if final else (w.numerators[j], w.denominator)
        optimizer.zero_grad(set_to_none=True)
        w.rng.save(j)
        passes.first.append(w.forward_backward(batch, num, den, sync=final))
        passes.first_norm = optimizer.first_step(grad_scale=w.norm_scale)
        if optimizer.is_perturbed:
            optimizer.zero_grad(set_to_none=True)
        elif final:
            break  # non-finite ∇L_k(w) (the same on every rank: it was all-reduced): hand it to _update, which skips
        # a discarded micro-batch's non-finite gradient runs its second pass at w: it is zeroed at the next start
        w.rng.restore(j)
        second = w.forward_backward(batch, num, den, sync=final)
        optimizer.restore()
        if final:
            passes.second.append(second)
    return passes


def _last_once(w: _Window, optimizer: SAM) -> _Passes:
    """`last` without its k − 1 duplicate replays: the replays all see B_k at w + e with the dropout masks of B_k's
    first pass, so Σ_{j=1..k} (1/k) ∇L_k(w + e) is one backward of L_k with weight k·(1/k). Equal up to float
    rounding (one product instead of a k-term sum), as is the reported perturbed loss (one value, not a mean of k)."""
    passes = _Passes(first=w.first_passes(sync_each=False))
    passes.first_norm = optimizer.first_step(grad_scale=w.norm_scale)
    if optimizer.is_perturbed:
        optimizer.zero_grad(set_to_none=True)
        w.rng.restore(w.k - 1)
        passes.second.append(w.forward_backward(w.batches[-1], w.last_numerator * w.k, w.last_denominator))
        optimizer.restore()
    return passes


def _last_only_survivor(w: _Window, optimizer: SAM) -> _Passes:
    """`last_only` computing only what survives: micro-batches 1..k−1 run their forward at w under no_grad (the
    literal loop's reported loss, and the same draws from the dropout RNG, so B_k sees the literal masks); their
    backward, perturbation and second pass, all zeroed by the literal loop at the next micro-batch, are skipped.
    The perturbation restores w exactly, so micro-batch k starts from bitwise the literal state."""
    passes = _Passes()
    for batch in w.batches[:-1]:
        with torch.no_grad():
            passes.first.append(w.loss_fn(batch).detach())
    k = w.k - 1
    w.rng.save(k)
    passes.first.append(w.forward_backward(w.batches[k], w.last_only_numerator, w.last_only_denominator))
    passes.first_norm = optimizer.first_step(grad_scale=w.norm_scale)
    if optimizer.is_perturbed:
        optimizer.zero_grad(set_to_none=True)
        w.rng.restore(k)
        passes.second.append(w.forward_backward(w.batches[k], w.last_only_numerator, w.last_only_denominator))
        optimizer.restore()
    return passes


_MODES = {"none": _none, "full": _full, "last": _last, "micro": _micro, "last_only": _last_only}
_SHORTCUTS = {"last": _last_once, "last_only": _last_only_survivor}


# ----------------------------------------------------------------------------------------------------------------------
# what the modes share


class _Window:
    """One window's micro-batches with their loss weights, the dropout RNG, the loss scale and the DDP module.

    Weights: micro-batch i's loss is multiplied by numerators[i] / denominator before its backward, so the summed
    gradients are Σ a_i ∇L_i (DDP: W·n_{r,i}/N per rank, which DDP's average over ranks turns into n_{r,i}/N);
    `last` replays B_k with last_numerator / last_denominator."""

    def __init__(
        self,
        loss_fn,
        micro_batches,
        optimizer,
        replay,
        sizes,
        scaler,
        reuse_dropout_rng,
        ddp,
        perturbation,
        global_sizes,
    ):
        k = len(micro_batches)
        self.loss_fn, self.batches, self.k, self.scaler, self.ddp = loss_fn, micro_batches, k, scaler, ddp
        self.world = world = torch.distributed.get_world_size(ddp.process_group) if ddp is not None else 1
        self.per_rank = ddp is not None and perturbation == "per_rank"
        # this rank's examples per micro-batch (n_{r,i}) and each global micro-batch's (n_i); equal: 1 and W
        self.local = local = list(sizes) if sizes is not None else [1] * k
        self.totals = totals = list(global_sizes) if global_sizes is not None else [world] * k
        if ddp is None:
            # (loss * n_i) / N: with sizes=None this is loss * 1 / k, bitwise the loss / k of the copied loop
            self.numerators, self.denominator = (list(sizes), sum(sizes)) if sizes is not None else ([1] * k, k)
            self.last_numerator, self.last_denominator = 1, k
            self.last_only_numerator, self.last_only_denominator = 1, 1
        else:
            # DDP divides the sum over ranks by W: rank r weights micro-batch i by W·n_{r,i}/N
            self.numerators, self.denominator = [world * n for n in local], sum(totals)
            # `last` replays: W·n_{r,k}/(n_k·k), so the k replays average to ∇L_k(w + e) of global micro-batch k
            self.last_numerator, self.last_denominator = world * local[-1], totals[-1] * k
            # `last_only`: W·n_{r,k}/n_k, so DDP's average is ∇L_k of global micro-batch k
            self.last_only_numerator, self.last_only_denominator = world * local[-1], totals[-1]

        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.rng = _DropoutRng(reuse_dropout_rng and replay != "none", device)
        grad_scale = scaler.get_scale() if scaler is not None else None
        # the factor a rank's first-pass gradient carries over the mean gradient it stands for, so that first_step
        # reports that gradient's norm (e = rho·g/‖g‖ does not depend on it): per_rank, W·N_r/N over ∇L^r; micro, W
        carried = 1.0
        if self.per_rank and sum(local) > 0:
            carried = world * sum(local) / self.denominator
        elif ddp is not None and replay == "micro":
            carried = float(world)
        self.norm_scale = grad_scale if carried == 1.0 else (grad_scale or 1.0) * carried

    def forward_backward(self, batch: Any, weight_num: int, weight_den: int, sync: bool = True) -> Tensor:
        """loss_fn(batch), backward of loss · weight_num / weight_den (scaled by the GradScaler, if any); returns the
        detached loss. DDP decides in the forward whether the backward all-reduces: both sit inside no_sync, or
        neither."""
        ddp = self.ddp
        with ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext():
            loss = self.loss_fn(batch)
            weighted = loss * weight_num / weight_den
            (self.scaler.scale(weighted) if self.scaler is not None else weighted).backward()
        return loss.detach()

    def first_passes(self, sync_each: bool) -> list[Tensor]:
        """Every micro-batch's pass at w, its RNG state saved first. DDP all-reduces on every backward (sync_each,
        the copied loop), else on the last one only, or on none (per_rank: the second pass synchronises)."""
        losses = []
        for i, batch in enumerate(self.batches):
            sync = sync_each or (i == self.k - 1 and not self.per_rank)
            self.rng.save(i)
            losses.append(self.forward_backward(batch, self.numerators[i], self.denominator, sync=sync))
        return losses


def _check_arguments(micro_batches, optimizer, replay, sizes, ddp, perturbation, global_sizes) -> None:
    if replay not in REPLAY_MODES:
        raise ValueError(f"replay={replay!r}; choose one of {REPLAY_MODES}")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation={perturbation!r}; choose one of {PERTURBATIONS}")
    if perturbation == "per_rank" and replay != "full":
        raise ValueError(
            f"perturbation='per_rank' applies to replay='full' only (got replay={replay!r}): micro "
            f"perturbs per micro-batch and rank anyway, last and last_only synchronise like the loops they copy"
        )
    k = len(micro_batches)
    if k == 0:
        raise ValueError("an accumulation window needs at least one micro-batch")
    if replay != "none" and not isinstance(optimizer, SAM):
        raise TypeError(f"replay={replay!r} needs a sam.SAM optimizer, got {type(optimizer).__name__}")
    lowest = 0 if ddp is not None else 1  # a rank may hold an empty slice (weight 0); one process may not
    if sizes is not None and (len(sizes) != k or any(n < lowest for n in sizes)):
        raise ValueError(
            f"sizes must hold {k} {'non-negative' if ddp is not None else 'positive'} counts, got {list(sizes)}"
        )
    if ddp is None and global_sizes is not None:
        raise ValueError("global_sizes is only for data-parallel windows (ddp=...)")
    if ddp is not None and (sizes is None) != (global_sizes is None):
        raise ValueError("with ddp, give sizes and global_sizes together (or neither: equal micro-batches)")
    if global_sizes is not None and (
        len(global_sizes) != k or any(g <= 0 or n > g for n, g in zip(sizes, global_sizes))
    ):
        raise ValueError(
            f"global_sizes must hold {k} counts, each > 0 and >= this rank's size; got "
            f"{list(global_sizes)} for sizes {list(sizes)}"
        )


def _result(w: _Window, replay: str, passes: _Passes, grad_norm: Tensor, skipped: bool) -> StepResult:
    """The window's numbers in one process, read to the host at once."""
    numerators = w.numerators
    first_losses, second_losses, first_norm = passes.first, passes.second, passes.first_norm
    loss = sum(x.double() * n for x, n in zip(first_losses, numerators)) / sum(numerators[: len(first_losses)])
    perturbed = None
    if second_losses:
        if replay in ("last", "last_only"):  # replays of micro-batch k (last_only: the one that was kept)
            perturbed = torch.stack([x.double() for x in second_losses]).mean()
        else:
            used = numerators[: len(second_losses)]
            perturbed = sum(x.double() * n for x, n in zip(second_losses, used)) / sum(used)
    numbers = torch.stack(
        [
            t.detach().double().cpu()
            for t in (loss, grad_norm)
            + ((perturbed,) if perturbed is not None else ())
            + ((first_norm,) if first_norm is not None else ())
        ]
    ).tolist()
    return StepResult(
        loss=numbers[0],
        grad_norm=numbers[1],
        perturbed_loss=numbers[2] if perturbed is not None else None,
        first_grad_norm=numbers[-1] if first_norm is not None else None,
        skipped=skipped,
    )


def _reduced_result(w: _Window, replay: str, passes: _Passes, grad_norm: Tensor, skipped: bool) -> StepResult:
    """The window's numbers over all ranks, from one all-reduce of (Σ n_{r,i} L_{r,i}, the same for the second
    pass, the first-pass norm). The gradient (hence grad_norm and skipped) is already the same on every rank."""
    ddp, world, local, totals = w.ddp, w.world, w.local, w.totals
    first_losses, second_losses, first_norm = passes.first, passes.second, passes.first_norm
    device = grad_norm.device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    first = sum((x.double() * n for x, n in zip(first_losses, local)), zero)
    if replay in ("last", "last_only"):  # the replays of this rank's slice of micro-batch k, averaged, by its size
        second = sum((x.double() for x in second_losses), zero) * local[-1] / max(1, len(second_losses))
    else:
        second = sum((x.double() * n for x, n in zip(second_losses, local)), zero)
    norm = first_norm.detach().double().to(device) if first_norm is not None else zero
    stats = torch.stack([first, second, norm])
    torch.distributed.all_reduce(stats, group=ddp.process_group)
    total = float(sum(totals))
    # one device-to-host read for the four numbers of the result
    first_sum, second_sum, norm_sum, grad_norm_value = (
        torch.cat([stats, grad_norm.detach().double().reshape(1).to(device)]).cpu().tolist()
    )
    perturbed = None
    if second_losses:  # the same on every rank: none never, global full/last skip together, per_rank/micro never
        perturbed = second_sum / (totals[-1] if replay in ("last", "last_only") else total)
    return StepResult(
        loss=first_sum / total,
        grad_norm=grad_norm_value,
        perturbed_loss=perturbed,
        # global and last: every rank holds the same norm, so the mean is that norm; per_rank/micro: the ranks' mean
        first_grad_norm=norm_sum / world if first_norm is not None else None,
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
