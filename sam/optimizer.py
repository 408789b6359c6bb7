"""SAM: Sharpness-Aware Minimization (Foret et al. 2021) as a wrapper around any torch optimizer.

One SAM update needs two gradients:

    g  = ∇L(w)                       first pass, at the current weights
    e  = rho · g / (‖g‖₂ + eps)      climb to the (first-order) worst point of the rho-ball around w
    g' = ∇L(w + e)                   second pass, at the perturbed weights
    w  ← base_step(w, g')            restore w, then let the base optimizer (e.g. AdamW) step with g'

ASAM (Kwon et al. 2021, `adaptive=True`) measures the ball in coordinates scaled by T = |w| (elementwise):

    e  = rho · T² g / (‖T g‖₂ + eps)

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

from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

_EPS = 1e-12


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    """‖(g_1, ..., g_n)‖₂ over all tensors, as a 0-d (≥ fp32) tensor on the first tensor's device."""
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    # at least fp32 (bf16/fp16 gradients), float64 stays float64
    dtype = torch.promote_types(torch.float32, grads[0].dtype)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))


class SAM(torch.optim.Optimizer):
    """SAM around a base optimizer class: `SAM(params, torch.optim.AdamW, rho=0.05, lr=3e-4)`.

    Args:
        params: parameters or param groups (a group may carry its own `rho`).
        base_optimizer: the optimizer *class*; it is built on the same param groups.
        rho: radius of the neighbourhood.
        adaptive: ASAM, e = rho · T²g / ‖Tg‖ with T = |w| elementwise.
        **base_kwargs: passed to the base optimizer (lr, weight_decay, betas, ...).

    Use `step(closure)` (closure = forward + backward, torch convention) or call `first_step` and `second_step`
    around your own second forward/backward; with gradient accumulation use `sam.train_step`.
    """

    def __init__(self, params: Iterable, base_optimizer: type, *, rho: float = 0.05, adaptive: bool = False,
                 **base_kwargs):
        if rho < 0.0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # One list of dicts shared by both: LR schedulers, `add_param_group` and hyper-parameter edits reach the base.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._perturbed: list[Tensor] = []  # parameters currently sitting at w + e
        self._saved: dict[Tensor, Tensor] = {}  # persistent buffers holding w while perturbed

    # ----------------------------------------------------------------------------------------------------------
    # the two halves of an update
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, grad_scale: Optional[float | Tensor] = None) -> Tensor:
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
        groups = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        params = [p for ps in groups for p in ps]
        if not params:
            return torch.zeros(())
        adaptive = [g["adaptive"] for g, ps in zip(self.param_groups, groups) if ps]
        if any(adaptive):
            # ‖T g‖ with T = |w| (only adaptive groups get T; a mixed setup uses T = 1 elsewhere)
            scaled = [p.grad * p.abs() if g["adaptive"] else p.grad
                      for g, ps in zip(self.param_groups, groups) for p in ps]
            norm = global_grad_norm(scaled) * inv_scale
            del scaled
        else:
            norm = global_grad_norm([p.grad for p in params]) * inv_scale

        if not torch.isfinite(norm):
            # inf/NaN in the gradient (fp16 overflow, divergence): do not move; the caller skips this update
            return norm
        self._save(params)
        for group, ps in zip(self.param_groups, groups):
            if not ps:
                continue
            # e = rho · g / ‖g‖ ; the gradients are still multiplied by the loss scale, hence inv_scale again
            scale = group["rho"] * inv_scale / (norm + _EPS)
            grads = [p.grad for p in ps]
            if group["adaptive"]:
                # e = rho · T² g / ‖T g‖, T = |w|: T² g = w ⊙ w ⊙ g
                e = torch._foreach_mul(ps, ps)
                torch._foreach_mul_(e, grads)
                torch._foreach_add_(ps, e, alpha=float(scale))  # climb to the local maximum w + e(w)
                del e
            else:
                # in place with a scalar alpha: no temporary copy of e (one host sync per update on CUDA)
                torch._foreach_add_(ps, grads, alpha=float(scale))  # climb to the local maximum w + e(w)
        if zero_grad:
            self.zero_grad()
        return norm

    @torch.no_grad()
    def restore(self) -> None:
        """Put every perturbed parameter back to its saved w (a copy, bitwise; never w + e - e)."""
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, [self._saved[p] for p in self._perturbed])
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
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Tensor:
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
    def _save(self, params: list[Tensor]) -> None:
        missing = [p for p in params if p not in self._saved or self._saved[p].shape != p.shape]
        for p in missing:
            self._saved[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        torch._foreach_copy_([self._saved[p] for p in params], params)
        self._perturbed = params

    @property
    def is_perturbed(self) -> bool:
        return bool(self._perturbed)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """The base optimizer's state; the param groups carry rho and adaptive, so they round-trip too."""
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
        self.base_optimizer.add_param_group({**{k: v for k, v in self.defaults.items() if k not in param_group},
                                             **param_group})

    def __repr__(self) -> str:
        return f"SAM(rho={self.defaults['rho']}, adaptive={self.defaults['adaptive']}, base={self.base_optimizer!r})"
