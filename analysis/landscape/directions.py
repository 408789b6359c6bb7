"""Filter-normalised directions (Li et al. 2018), 1D loss curves, 2D loss surfaces and interpolation."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from analysis.landscape.core import (
    DEFAULT_EXCLUDE,
    LossFn,
    Params,
    PassCounter,
    Vectors,
    _aligned,
    _generator,
    _loss_value,
    _param_list,
    preserve_params,
)


# ----------------------------------------------------------------------------------------------------------------------
# directions, curves, surfaces, interpolation
# ----------------------------------------------------------------------------------------------------------------------
def _name_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from (seed, parameter name): a parameter's draw does not depend on the others."""
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def filter_normalized_direction(
    named_params, *, seed: int, exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> dict[str, Tensor]:
    """A random direction with the scale of the weights, filter by filter (the idea of Li et al. 2018).

    ``named_params``: a module (its ``named_parameters()`` are used, never its buffers), a mapping name -> tensor, or
    an iterable of (name, tensor) pairs. For every parameter W with >= 2 dims whose name matches no ``exclude`` pattern
    (``re.search``; default: LayerNorm / layer_norm / layernorm):

    * D ~ N(0, I) drawn on CPU from a generator seeded by hash(seed, name) (so a parameter's direction depends only
      on the seed, its name and its shape);
    * a filter is a row W[i] = W[i, ...] (index along dim 0, the output unit of a Linear layer, the token of an
      embedding table: embeddings are 2D and are treated like weights, one filter per token / position);
    * D[i] <- D[i] - mean(D[i]) (mean-zero rows; skipped for rows of one element), then
      D[i] <- D[i] * ||W[i]||_2 / ||D[i]||_2, so every row of D has the norm of the same row of W (a zero row of W
      gives a zero row of D).

    Parameters with < 2 dims (biases, LayerNorm weights and biases) and excluded names get zeros. Returns
    ``{name: direction}`` on each parameter's device and dtype, in the given order, for use with loss_curve_1d /
    loss_surface_2d together with ``params = dict(model.named_parameters())``.
    """
    if isinstance(named_params, torch.nn.Module):
        items = list(named_params.named_parameters())
    elif isinstance(named_params, Mapping):
        items = list(named_params.items())
    else:
        items = list(named_params)
    patterns = [re.compile(p) for p in exclude]
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, p in items:
            if name in out:
                raise ValueError(f"parameter name {name!r} appears twice")
            if p.dim() < 2 or any(pat.search(name) for pat in patterns):
                out[name] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                continue
            gen = _generator(_name_seed(seed, name))
            rows = torch.randn(p.shape, generator=gen, dtype=torch.float32).reshape(p.shape[0], -1).double()
            if rows.shape[1] > 1:
                rows = rows - rows.mean(dim=1, keepdim=True)
            w_norm = p.detach().reshape(p.shape[0], -1).double().cpu().norm(dim=1, keepdim=True)
            d_norm = rows.norm(dim=1, keepdim=True)
            factor = torch.where(d_norm > 0, w_norm / d_norm.clamp_min(1e-300), torch.zeros_like(d_norm))
            out[name] = (rows * factor).reshape(p.shape).to(device=p.device, dtype=p.dtype)
    return out


def loss_curve_1d(
    loss_fn: LossFn,
    params: Params,
    direction: Vectors,
    alphas: Iterable[float],
    *,
    counter: PassCounter | None = None,
) -> Tensor:
    """L(w + alpha * d) for every alpha, as a CPU float64 tensor of shape (len(alphas),).

    ``direction`` has the structure of ``params`` (same names for a mapping, e.g. from filter_normalized_direction).
    Every point is written from the saved weights (w0 + alpha d, no accumulation); weights restored bitwise after.
    """
    plist = _param_list(params)
    d = _aligned(params, direction, "direction")
    alist = [float(a) for a in alphas]
    values = torch.empty(len(alist), dtype=torch.float64)
    with preserve_params(plist) as base:
        for i, a in enumerate(alist):
            with torch.no_grad():
                for p, b, x in zip(plist, base, d):
                    p.copy_(torch.add(b, x, alpha=a))
            values[i] = _loss_value(loss_fn, counter)
    return values


def loss_surface_2d(
    loss_fn: LossFn,
    params: Params,
    d1: Vectors,
    d2: Vectors,
    alphas: Iterable[float],
    betas: Iterable[float],
    *,
    counter: PassCounter | None = None,
) -> Tensor:
    """L(w + alpha_i d1 + beta_j d2) on the grid, as a CPU float64 tensor Z with Z[i, j] for (alphas[i], betas[j]).

    Costs len(alphas) * len(betas) forwards; weights restored bitwise afterwards.
    """
    plist = _param_list(params)
    u = _aligned(params, d1, "d1")
    v = _aligned(params, d2, "d2")
    alist = [float(a) for a in alphas]
    blist = [float(b) for b in betas]
    values = torch.empty(len(alist), len(blist), dtype=torch.float64)
    with preserve_params(plist) as base:
        for i, a in enumerate(alist):
            for j, b in enumerate(blist):
                with torch.no_grad():
                    for p, w0, x, y in zip(plist, base, u, v):
                        p.copy_(torch.add(w0, x, alpha=a).add_(y, alpha=b))
                values[i, j] = _loss_value(loss_fn, counter)
    return values


def interpolate(
    loss_fn: LossFn,
    params: Params,
    theta_a: Vectors,
    theta_b: Vectors,
    alphas: Iterable[float],
    *,
    counter: PassCounter | None = None,
) -> Tensor:
    """L((1 - alpha) theta_a + alpha theta_b) for every alpha, as a CPU float64 tensor (linear mode connectivity).

    ``theta_a`` / ``theta_b`` have the structure of ``params`` (e.g. ``{name: tensor}`` of two checkpoints restricted
    to the parameter names; they are moved to each parameter's device and dtype). alpha = 0 loads theta_a exactly and
    alpha = 1 loads theta_b exactly; alphas outside [0, 1] extrapolate. The model's own weights are restored bitwise.
    """
    plist = _param_list(params)
    ta = _aligned(params, theta_a, "theta_a")
    tb = _aligned(params, theta_b, "theta_b")
    alist = [float(a) for a in alphas]
    values = torch.empty(len(alist), dtype=torch.float64)
    with preserve_params(plist):
        for i, a in enumerate(alist):
            with torch.no_grad():
                for p, x, y in zip(plist, ta, tb):
                    p.copy_(torch.mul(x, 1.0 - a).add_(y, alpha=a))
            values[i] = _loss_value(loss_fn, counter)
    return values
