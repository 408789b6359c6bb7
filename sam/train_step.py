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

plus one all-reduce of three numbers for the reported losses and norm. A rank whose slice of a micro-batch is empty
passes any batch with size 0 (weight 0), so that every rank runs the same passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .optimizer import SAM, global_grad_norm

REPLAY_MODES = ("none", "full", "last", "micro")
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
) -> StepResult:
    """Run one accumulation window and its update; see the module docstring for the gradient of each mode.

    Args:
        loss_fn: `loss_fn(batch) -> Tensor`, the *mean* loss of one micro-batch (forward only; we call backward).
            For bf16/fp16 autocast, run the forward under `torch.autocast` (inside loss_fn or around this call).
            With `ddp`, loss_fn must run the forward through the DDP module (that is where DDP hooks in).
        micro_batches: the k micro-batches of the window (anything loss_fn accepts); with `ddp`, this rank's slices
            of the k global micro-batches.
        optimizer: a `SAM` for full/last/micro; a plain torch optimizer (or a SAM, whose base is used) for none.
        replay: "none" | "full" | "last" | "micro".
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

    Returns:
        StepResult(loss, perturbed_loss, grad_norm, skipped, first_grad_norm); with `ddp`, losses over the whole
        global window (identical on every rank), first_grad_norm of per_rank/micro averaged over the ranks.

    Raises:
        ValueError: unknown replay or perturbation, empty window, bad sizes/global_sizes, perturbation="per_rank"
            with a replay other than full. TypeError: a SAM mode with a plain optimizer.
    """
    if replay not in REPLAY_MODES:
        raise ValueError(f"replay={replay!r}; choose one of {REPLAY_MODES}")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation={perturbation!r}; choose one of {PERTURBATIONS}")
    if perturbation == "per_rank" and replay != "full":
        raise ValueError(
            f"perturbation='per_rank' applies to replay='full' only (got replay={replay!r}): micro "
            f"perturbs per micro-batch and rank anyway, last synchronises like the copied loop"
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

    world = torch.distributed.get_world_size(ddp.process_group) if ddp is not None else 1
    per_rank = ddp is not None and perturbation == "per_rank"
    # this rank's examples per micro-batch (n_{r,i}) and each global micro-batch's (n_i); equal: 1 and W
    local = list(sizes) if sizes is not None else [1] * k
    totals = list(global_sizes) if global_sizes is not None else [world] * k
    if ddp is None:
        # (loss * n_i) / N: with sizes=None this is loss * 1 / k, bitwise the loss / k of the copied loop
        numerators, denominator = (list(sizes), sum(sizes)) if sizes is not None else ([1] * k, k)
        last_numerator, last_denominator = 1, k
    else:
        # DDP divides the sum over ranks by W: rank r weights micro-batch i by W·n_{r,i}/N
        numerators, denominator = [world * n for n in local], sum(totals)
        # `last` replays: W·n_{r,k}/(n_k·k), so the k replays average to ∇L_k(w + e) of global micro-batch k
        last_numerator, last_denominator = world * local[-1], totals[-1] * k

    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")
    rng = _DropoutRng(reuse_dropout_rng and replay != "none", device)
    grad_scale = scaler.get_scale() if scaler is not None else None
    # the factor a rank's first-pass gradient carries over the mean gradient it stands for, so that first_step
    # reports that gradient's norm (e = rho·g/‖g‖ does not depend on it): per_rank, W·N_r/N over ∇L^r; micro, W
    carried = 1.0
    if per_rank and sum(local) > 0:
        carried = world * sum(local) / denominator
    elif ddp is not None and replay == "micro":
        carried = float(world)
    norm_scale = grad_scale if carried == 1.0 else (grad_scale or 1.0) * carried

    def backward(loss: Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def forward_backward(batch: Any, weight_num: int, weight_den: int, sync: bool = True) -> Tensor:
        # DDP decides in the forward whether the backward all-reduces: both sit inside no_sync, or neither
        with ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext():
            loss = loss_fn(batch)
            backward(loss * weight_num / weight_den)
        return loss.detach()

    optimizer.zero_grad(set_to_none=True)
    first_losses: list[Tensor] = []
    second_losses: list[Tensor] = []
    first_norm: Tensor | None = None

    if replay == "micro":
        accumulated: dict[Tensor, Tensor] = {}
        stopped = False
        for i, batch in enumerate(micro_batches):
            final = i == k - 1
            rng.save(i)
            first_losses.append(forward_backward(batch, numerators[i], denominator, sync=False))
            first_norm = optimizer.first_step(grad_scale=norm_scale)  # e_i from this micro-batch alone
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
            rng.restore(i)
            second_losses.append(forward_backward(batch, numerators[i], denominator, sync=final))
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
    else:
        for i, batch in enumerate(micro_batches):
            # none, full/global: all-reduce on the last backward; last: on every one (the copied loop); per_rank: none
            sync = replay == "last" or (i == k - 1 and not per_rank)
            rng.save(i)
            first_losses.append(forward_backward(batch, numerators[i], denominator, sync=sync))
        if replay != "none":
            first_norm = optimizer.first_step(grad_scale=norm_scale)
            # per_rank: the ranks' decisions can differ, so a rank with a non-finite gradient runs the second pass
            # anyway (at w) with that gradient kept: the all-reduce hands it to every rank and all skip together
            if optimizer.is_perturbed or per_rank:
                if optimizer.is_perturbed:
                    optimizer.zero_grad(set_to_none=True)
                if replay == "full":
                    for i, batch in enumerate(micro_batches):
                        rng.restore(i)
                        second_losses.append(forward_backward(batch, numerators[i], denominator, sync=i == k - 1))
                else:  # "last": `for _ in range(k): (loss(B_k) / k).backward()`, as the copied loop does
                    for _ in range(k):
                        rng.restore(k - 1)
                        second_losses.append(forward_backward(micro_batches[-1], last_numerator, last_denominator))
                optimizer.restore()

    grad_norm, skipped = _update(optimizer, params, max_grad_norm, scaler)

    if ddp is not None:
        return _reduced_result(
            ddp, replay, per_rank, world, local, totals, first_losses, second_losses, first_norm, grad_norm, skipped
        )
    loss = sum(x.double() * n for x, n in zip(first_losses, numerators)) / sum(numerators[: len(first_losses)])
    perturbed = None
    if second_losses:
        if replay == "last":
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


def _reduced_result(
    ddp, replay, per_rank, world, local, totals, first_losses, second_losses, first_norm, grad_norm, skipped
) -> StepResult:
    """The window's numbers over all ranks, from one all-reduce of (Σ n_{r,i} L_{r,i}, the same for the second
    pass, the first-pass norm). The gradient (hence grad_norm and skipped) is already the same on every rank."""
    device = grad_norm.device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    first = sum((x.double() * n for x, n in zip(first_losses, local)), zero)
    if replay == "last":  # the k replays of this rank's slice of micro-batch k, averaged, weighted by its size
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
        perturbed = second_sum / (totals[-1] if replay == "last" else total)
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
