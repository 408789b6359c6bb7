"""Gradient-fidelity diagnostic: how far is the buggy `last` replay gradient from the correct `full` one?

On the window about to be trained on, at the current weights w, with dropout off (with dropout on, two full-window
passes that differ only in their masks agree to a cosine of only ~0.7, which would cap the signal):

    g      = Σ a_i ∇L_i(w)              e = rho · g / ‖g‖   (ASAM: rho · T²g / ‖Tg‖, T = |w| + eta or 1)
    h_i    = ∇L_i(w + e)
    g_full = Σ a_i h_i                  what `full` replay steps with
    g_last = h_k                        what `last` replay steps with (k copies of h_k, each weighted 1/k)

where e comes from `sam.optimizer.perturbation` on the optimizer's own param groups, so rho, ASAM, eta and which
tensors count as weights are exactly what the training step uses. It logs diag/grad_cos = cos(g_last, g_full) and
diag/grad_norm_ratio = ‖g_last‖ / ‖g_full‖. Cost: 2k forward and backward passes, no optimizer state touched; the
weights are restored from a copy and the RNG state and train/eval mode are put back, so the training trajectory is
the same with or without it.
"""

from __future__ import annotations

import torch

from .optimizer import perturbation


def _dot(a, b) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def last_vs_full_gradient(model, loss_fn, batches, sizes, param_groups) -> dict:
    """cos(g_last, g_full) and ‖g_last‖/‖g_full‖ on one window (see the module docstring).

    param_groups: the SAM optimizer's `param_groups` (they define rho and the ASAM scaling); every trainable
    parameter of `model` should be in one of them. Returns {"diag/grad_cos", "diag/grad_norm_ratio"} as floats."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = float(sum(sizes))
    weights = [n / total for n in sizes]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(params[0].device) if params[0].is_cuda else None
    was_training = model.training
    model.eval()  # dropout off
    saved = [p.detach().clone() for p in params]
    try:
        g = [torch.zeros_like(p) for p in params]
        for a, batch in zip(weights, batches):
            grads = torch.autograd.grad(loss_fn(batch), params, allow_unused=True)
            torch._foreach_add_(
                g, [gi if gi is not None else torch.zeros_like(p) for gi, p in zip(grads, params)], alpha=a
            )
        with torch.no_grad():
            e, _ = perturbation(param_groups, dict(zip(params, g)))
            moved = [p for p in params if p in e]
            torch._foreach_add_(moved, [e[p] for p in moved])
        del g, e
        full = [torch.zeros_like(p) for p in params]
        last = None
        for i, (a, batch) in enumerate(zip(weights, batches)):
            grads = torch.autograd.grad(loss_fn(batch), params, allow_unused=True)
            grads = [gi if gi is not None else torch.zeros_like(p) for gi, p in zip(grads, params)]
            torch._foreach_add_(full, grads, alpha=a)
            if i == len(batches) - 1:
                last = grads
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)
        model.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, params[0].device)
    full_norm = torch.sqrt(_dot(full, full))
    last_norm = torch.sqrt(_dot(last, last))
    cos = _dot(full, last) / (full_norm * last_norm + 1e-30)
    return {"diag/grad_cos": float(cos), "diag/grad_norm_ratio": float(last_norm / (full_norm + 1e-30))}
