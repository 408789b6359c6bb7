"""SAM: Sharpness-Aware Minimization (Foret et al. 2021) as a wrapper around any torch optimizer.

One SAM update needs two gradients:

    g  = ∇L(w)                       first pass, at the current weights
    e  = rho · g / (‖g‖₂ + eps)      climb to the (first-order) worst point of the rho-ball around w
    g' = ∇L(w + e)                   second pass, at the perturbed weights
    w  ← base_step(w, g')            restore w, then let the base optimizer (e.g. AdamW) step with g'

ASAM (Kwon et al. 2021, `adaptive=True`) measures the ball in coordinates scaled by an elementwise T:

    e  = rho · T² g / (‖T g‖₂ + eps)
    T  = |w| + eta   for a weight        (eta = 0.01, so a weight that is exactly 0 still moves)
    T  = 1           for a bias

as the authors' code does (SamsungLabs/ASAM, asam.py: `t_w = |p| + eta` for parameters named "weight", 1 otherwise).
This module sees tensors, not names: a param group says which of its tensors are weights with `is_weight`
(True / False); left unset (None), a tensor with ndim >= 2 is a weight and a vector is a bias (LayerNorm scales
included, which the authors' name rule counts as weights). `perturbation()` computes e by exactly this rule for code
that needs it outside an optimizer step (sam/diagnostics.py); `first_step` and `perturbation` compute e through
the same two functions (`_ascent_norm`, `_ascent_steps`).

Design choices that differ from most public implementations, each covered by a test in tests/test_sam_optimizer.py:
- the weights are restored from a saved copy, never by subtracting e (subtraction drifts, badly so in bf16);
- the saved copies are persistent buffers: no allocation per update, one parameter copy of extra memory;
- a parameter without a gradient in the first pass is not perturbed; every perturbed parameter is restored whether
  or not it has a gradient in the second pass, so nothing is left at w + e and no stale e survives an update;
- `param_groups` *are* the base optimizer's (the same list of the same dicts), also after `load_state_dict`, so an LR
  scheduler attached to SAM drives the base optimizer;
- the norm and the perturbation use `torch._foreach_*` kernels, not a Python loop over parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

_EPS = 1e-12
ETA = 0.01  # ASAM's eta (Kwon et al. 2021, and SamsungLabs/ASAM's default)


def is_weight(p: Tensor, group: Mapping) -> bool:
    """Whether ASAM scales `p` as a weight (T = |w| + eta) or as a bias (T = 1).

    The group's `is_weight` decides when it is True or False; when it is None (the default) a tensor with ndim >= 2
    is a weight and anything smaller a bias."""
    flag = group.get("is_weight")
    return p.ndim >= 2 if flag is None else bool(flag)


def asam_scales(group: Mapping, params: Sequence[Tensor]) -> list[Tensor | None]:
    """T for each of `params` (the group's parameters that take part): |w| + eta (a new tensor) for a weight of an
    adaptive group, None (meaning T = 1) for a bias or when the group is not adaptive (plain SAM)."""
    if not group.get("adaptive", False):
        return [None] * len(params)
    eta = group.get("eta", ETA)
    return [p.detach().abs().add_(eta) if is_weight(p, group) else None for p in params]


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    """‖(g_1, ..., g_n)‖₂ over all tensors, as a 0-d (≥ fp32) tensor on the first tensor's device."""
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    # at least fp32 (bf16/fp16 gradients), float64 stays float64
    dtype = torch.promote_types(torch.float32, grads[0].dtype)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))


@torch.no_grad()
def _climb(param_groups, saved: dict[Tensor, Tensor], inv_scale: float | Tensor = 1.0) -> tuple[list[Tensor], Tensor]:
    """Save w into `saved` (persistent buffers, allocated once per parameter and reused) and move every parameter
    with a gradient to w + e (e from `.grad` by `_ascent_norm`'s rule; the gradients may carry a loss scale of
    1/inv_scale). Returns (the moved parameters, ‖g‖ unscaled): nothing moves, [], when no parameter has a gradient
    (norm 0) or ‖g‖ is not finite. Shared by `SAM.first_step` and `sam.hf.SAMTrainer`; the caller keeps the list,
    so its own attribute says whether the weights sit at w + e."""
    groups, norm = _ascent_norm(param_groups, None, inv_scale)
    if not groups:
        return [], torch.zeros(())
    if not torch.isfinite(norm):
        # inf/NaN in the gradient (fp16 overflow, divergence): do not move; the caller skips this update
        return [], norm
    params = [p for _, ps, _, _ in groups for p in ps]
    for p in params:
        if p not in saved or saved[p].shape != p.shape:
            saved[p] = torch.empty_like(p, memory_format=torch.preserve_format)
    torch._foreach_copy_([saved[p] for p in params], params)
    for ps, directions, alpha in _ascent_steps(groups, norm, inv_scale):
        # in place with a scalar alpha: no temporary copy of e
        torch._foreach_add_(ps, directions, alpha=alpha)  # climb to w + e(w)
    return params, norm


@torch.no_grad()
def _restore(perturbed: list[Tensor], saved: dict[Tensor, Tensor]) -> None:
    """Put every perturbed parameter back to its saved w (a copy, bitwise; never w + e - e)."""
    if perturbed:
        torch._foreach_copy_(perturbed, [saved[p] for p in perturbed])


class SAM(torch.optim.Optimizer):
    """SAM around a base optimizer class: `SAM(params, torch.optim.AdamW, rho=0.05, lr=3e-4)`.

    Args:
        params: parameters or param groups (a group may carry its own `rho`, `adaptive`, `eta` and `is_weight`).
        base_optimizer: the optimizer *class*; it is built on the same param groups.
        rho: radius of the neighbourhood (>= 0).
        adaptive: ASAM, e = rho · T²g / ‖Tg‖ with T = |w| + eta for weights and T = 1 for biases
            (Kwon et al. 2021; SamsungLabs/ASAM).
        eta: ASAM's eta (>= 0), 0.01 as in the paper; ignored unless adaptive.
        **base_kwargs: passed to the base optimizer (lr, weight_decay, betas, ...).

    Param-group key `is_weight`: True (every tensor of the group is a weight), False (biases), or None / absent
    (by shape: ndim >= 2 is a weight). Only ASAM reads it.

    Use `step(closure)` (closure = forward + backward, torch convention) or call `first_step` and `second_step`
    around your own second forward/backward; with gradient accumulation use `sam.train_step`.
    """

    def __init__(
        self,
        params: Iterable,
        base_optimizer: type,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = ETA,
        **base_kwargs,
    ):
        if rho < 0.0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if eta < 0.0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, eta=eta, is_weight=None, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # One list of dicts shared by both: LR schedulers, `add_param_group` and hyper-parameter edits reach the base.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._perturbed: list[Tensor] = []  # parameters currently sitting at w + e
        self._saved: dict[Tensor, Tensor] = {}  # persistent buffers holding w while perturbed

    # ----------------------------------------------------------------------------------------------------------
    # the two halves of an update
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, grad_scale: float | Tensor | None = None) -> Tensor:
        """Save w and move to w + e. Returns ‖g‖ (unscaled, a 0-d tensor; the ASAM norm ‖Tg‖ when adaptive).

        If ‖g‖ is not finite the weights are not moved (`is_perturbed` stays False) and the norm is returned so the
        caller can skip the update.

        `grad_scale`: the factor the gradients carry (a GradScaler's scale). e = rho·g/‖g‖ does not depend on it
        except through eps, so instead of unscaling every gradient we divide the norm by the scale, a scalar.

        Clipping the gradient before this call, as a widely copied loop does, changes nothing: clipping multiplies
        g by c > 0 and rho·(c g)/‖c g‖ = rho·g/‖g‖. Clip the gradient of the second pass instead.
        """
        if self._perturbed:
            raise RuntimeError("first_step called twice without second_step: the weights are already perturbed")
        inv_scale = 1.0 if grad_scale is None else 1.0 / grad_scale
        self._perturbed, norm = _climb(self.param_groups, self._saved, inv_scale)
        if zero_grad and self._perturbed:  # (not moved: the caller keeps the gradient to skip with)
            self.zero_grad()
        return norm

    @torch.no_grad()
    def restore(self) -> None:
        """Put every perturbed parameter back to its saved w (a copy, bitwise; never w + e - e)."""
        _restore(self._perturbed, self._saved)
        self._perturbed = []

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Go back to w and let the base optimizer step with the gradient computed at w + e."""
        self.restore()
        self.base_optimizer.step()
        self.mark_stepped()
        if zero_grad:
            self.zero_grad()

    def mark_stepped(self) -> None:
        # LR schedulers wrap `optimizer.step` to notice that an update happened before `scheduler.step()`; SAM's
        # update is `second_step` (or a GradScaler stepping the base), so say so explicitly.
        self._opt_called = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:
        """Full SAM update. `closure` does forward + backward and returns the loss (torch convention)."""
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that does forward + backward; or use first/second_step")
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss

    # ----------------------------------------------------------------------------------------------------------
    @property
    def is_perturbed(self) -> bool:
        return bool(self._perturbed)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The base optimizer's state; the param groups carry rho, adaptive, eta and is_weight, so they round-trip."""
        if self._perturbed:
            raise RuntimeError("state_dict() while perturbed: call second_step (or restore) first")
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # torch rebuilds param_groups on load; re-share them so schedulers and SAM see the base optimizer's dicts
        self.param_groups = self.base_optimizer.param_groups

    def add_param_group(self, param_group: dict) -> None:
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__ before the base exists
            super().add_param_group(param_group)
            return
        self.base_optimizer.add_param_group(
            {**{k: v for k, v in self.defaults.items() if k not in param_group}, **param_group}
        )

    def __repr__(self) -> str:
        adaptive = f", adaptive=True, eta={self.defaults['eta']}" if self.defaults["adaptive"] else ""
        return f"SAM(rho={self.defaults['rho']}{adaptive}, base={self.base_optimizer!r})"


@torch.no_grad()
def perturbation(
    param_groups: Sequence[Mapping],
    grads: Mapping[Tensor, Tensor] | None = None,
) -> tuple[dict[Tensor, Tensor], Tensor]:
    """The perturbation e that `SAM.first_step` would apply, without moving anything: ({param: e}, ‖T g‖).

    param_groups: SAM's `param_groups` (or dicts with `params`, `rho` and, for ASAM, `adaptive`, `eta`, `is_weight`).
    grads: {param: gradient}; None takes each parameter's `.grad`. Parameters without a gradient get no entry.
    e = rho · T²g / (‖Tg‖ + 1e-12) with T from `asam_scales` (T = 1 everywhere for plain SAM), the norm global over
    every parameter of every group. For diagnostics that perturb by hand (sam/diagnostics.py) so they follow
    the optimizer's rule exactly.
    """
    groups, norm = _ascent_norm(param_groups, grads, 1.0)
    if not groups:
        return {}, torch.zeros(())
    return {p: d * alpha for ps, ds, alpha in _ascent_steps(groups, norm, 1.0) for p, d in zip(ps, ds)}, norm


def _ascent_norm(
    param_groups: Sequence[Mapping], grads: Mapping[Tensor, Tensor] | None, inv_scale: float | Tensor
) -> tuple[list[tuple[Mapping, list[Tensor], list[Tensor], list[Tensor | None]]], Tensor]:
    """The first half of e = rho · T²g / (‖Tg‖ + eps): for each group with gradients, (group, its parameters that
    have one, their gradients, T per parameter or None where T = 1), and ‖Tg‖ over all of them, times `inv_scale`
    (the gradients may carry a loss scale). grads: {param: gradient}, or None for each parameter's `.grad`."""
    groups = []
    for group in param_groups:
        ps = [p for p in group["params"] if (grads.get(p) if grads is not None else p.grad) is not None]
        if ps:
            gs = [grads[p] if grads is not None else p.grad for p in ps]
            groups.append((group, ps, gs, asam_scales(group, ps)))
    if not groups:
        return [], torch.zeros(())
    if any(t is not None for _, _, _, ts in groups for t in ts):
        # ‖T g‖ over every parameter; T = 1 for biases and for groups that are not adaptive
        scaled = [g * t if t is not None else g for _, _, gs, ts in groups for g, t in zip(gs, ts)]
        norm = global_grad_norm(scaled) * inv_scale
        del scaled
    else:
        norm = global_grad_norm([g for _, _, gs, _ in groups for g in gs]) * inv_scale
    return groups, norm


def _ascent_steps(
    groups: list, norm: Tensor, inv_scale: float | Tensor
) -> list[tuple[list[Tensor], list[Tensor], float]]:
    """The second half: per group (parameters, directions d, alpha) with e = alpha · d, d = T²g (built in the T
    buffers of `_ascent_norm`, which it consumes) or g itself where T = 1, and alpha = rho·inv_scale / (‖Tg‖ + eps).
    The gradients still carry the loss scale, hence inv_scale again. alpha is read to the host once per distinct
    rho (one host sync per update on CUDA), not once per group."""
    alphas: dict[float, float] = {}
    steps = []
    for group, ps, gs, ts in groups:
        rho = group["rho"]
        if rho not in alphas:
            alphas[rho] = float(rho * inv_scale / (norm + _EPS))
        weights = [i for i, t in enumerate(ts) if t is not None]
        if weights:
            # ASAM: T² g in the T buffers themselves
            w_ts, w_gs = [ts[i] for i in weights], [gs[i] for i in weights]
            torch._foreach_mul_(w_ts, w_ts)
            torch._foreach_mul_(w_ts, w_gs)
        steps.append((ps, [t if t is not None else g for g, t in zip(gs, ts)], alphas[rho]))
    return steps
