"""Hessian-vector products, the top Hessian eigenvalue (power iteration) and Hutchinson's trace estimate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from analysis.landscape.core import (
    EigenResult,
    LossFn,
    Params,
    PassCounter,
    TraceEstimate,
    Vectors,
    _aligned,
    _check_scalar,
    _count,
    _dot,
    _gaussian_like,
    _generator,
    _mean_se,
    _norm,
    _param_list,
    _rademacher_like,
)

_NO_DOUBLE_BACKWARD_HINT = (
    "the model has an operation without a double backward; for transformers models load them with "
    'attn_implementation="eager" (SDPA/flash attention cannot be differentiated twice) and in fp32'
)


# ----------------------------------------------------------------------------------------------------------------------
# Hessian-vector products
# ----------------------------------------------------------------------------------------------------------------------
class _Hessian:
    """v -> H v at the current weights, H = d^2 L / dw^2, by double backward.

    Building it runs one forward and one backward with ``create_graph=True`` and keeps the gradient graph g(w);
    each product then differentiates the scalar g(w) . v once more: d(g . v)/dw = H v (v held constant).
    """

    def __init__(self, loss_fn: LossFn, plist: list[Tensor], counter: PassCounter | None):
        self.plist = plist
        self.counter = counter
        with torch.enable_grad():
            loss = _check_scalar(loss_fn())
            _count(counter, forward=1)
            self.loss = float(loss.detach())
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, plist, create_graph=True, allow_unused=True)
                _count(counter, backward=1)
            else:  # the loss does not depend on the parameters at all
                grads = (None,) * len(plist)
        # a gradient that is None or has no graph does not depend on the weights: its Hessian block is zero
        self.grads = [g if g is not None and g.requires_grad else None for g in grads]

    def __call__(self, vectors: Sequence[Tensor], *, retain_graph: bool = True) -> list[Tensor]:
        terms = [(g * v).sum() for g, v in zip(self.grads, vectors) if g is not None]
        if not terms:
            _count(self.counter, hvp=1)
            return [torch.zeros_like(p) for p in self.plist]
        with torch.enable_grad():
            gv = torch.stack(terms).sum()
            try:
                hv = torch.autograd.grad(gv, self.plist, retain_graph=retain_graph, allow_unused=True)
            except RuntimeError as err:
                if "derivative for" in str(err) and "not implemented" in str(err):
                    raise RuntimeError(f"{_NO_DOUBLE_BACKWARD_HINT}: {err}") from err
                raise
        _count(self.counter, hvp=1)
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(self.plist, hv)]

    def release(self) -> None:
        self.grads = []


def hessian_vector_product(
    loss_fn: LossFn, params: Params, vectors: Vectors, *, counter: PassCounter | None = None
) -> list[Tensor]:
    """H v for the Hessian H = d^2 L / dw^2 of ``loss_fn`` at the current weights, by double backward.

    ``H v = d/dw (grad L(w) . v)``: one forward, one backward with ``create_graph=True``, one more backward
    (counted as forward=1, backward=1, hvp=1). ``vectors`` has the structure of ``params``; returns a list of tensors
    in the order of the parameters. Parameters with no influence on the loss get zeros.
    """
    plist = _param_list(params)
    vlist = _aligned(params, vectors, "vectors")
    hess = _Hessian(loss_fn, plist, counter)
    try:
        return hess(vlist, retain_graph=False)
    finally:
        hess.release()


def _operator(loss_fn: LossFn, plist: list[Tensor], counter: PassCounter | None, reuse_graph: bool):
    """A callable v -> H v; with reuse_graph one gradient graph serves every product (memory for speed)."""
    if reuse_graph:
        hess = _Hessian(loss_fn, plist, counter)
        return hess, hess.release

    def fresh(vectors: Sequence[Tensor]) -> list[Tensor]:
        h = _Hessian(loss_fn, plist, counter)
        return h(vectors, retain_graph=False)

    return fresh, lambda: None


def hessian_top_eigen(
    loss_fn: LossFn,
    params: Params,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    counter: PassCounter | None = None,
    reuse_graph: bool = True,
    shift: float = 0.0,
    return_vector: bool = False,
) -> EigenResult:
    """Dominant Hessian eigenvalue by power iteration on Hessian-vector products.

    v_0 = z / ||z||, z ~ N(0, I) from ``torch.Generator().manual_seed(seed)`` (drawn on CPU, parameter order).
    For k = 1..iters: u = H v_{k-1}; lambda_k = v_{k-1}^T u (Rayleigh quotient); stop when
    |lambda_k - lambda_{k-1}| < tol * |lambda_{k-1}|; else v_k = (u - shift v_{k-1}) / ||u - shift v_{k-1}||.
    Returns lambda of the last product (a Rayleigh quotient of H itself, whatever the shift).

    Power iteration on H - shift I converges to the eigenvector whose eigenvalue is farthest from ``shift``. With
    shift = 0 that is the eigenvalue of largest *magnitude*: lambda_max near a minimum, but a negative number when the
    Hessian has a larger negative eigenvalue (off a minimum, e.g. a randomly initialised network). Then rerun with
    ``shift`` = that negative value: H - shift I is positive semi-definite and the result is lambda_max (converging
    at the rate (lambda_2 - shift) / (lambda_max - shift), so give it more iterations). Costs ``iterations`` HVPs plus
    one forward+backward (``reuse_graph=True``: the gradient graph stays in memory for the whole call) or one
    forward+backward per HVP (``reuse_graph=False``).
    """
    if iters < 1:
        raise ValueError("iters must be >= 1")
    plist = _param_list(params)
    gen = _generator(seed)
    v = _gaussian_like(plist, gen)
    n0 = _norm(v)
    v = [x / n0 for x in v]
    apply, release = _operator(loss_fn, plist, counter, reuse_graph)
    history: list[float] = []
    converged = False
    try:
        for _ in range(iters):
            hv = apply(v)
            lam = _dot(v, hv)
            history.append(lam)
            if len(history) > 1 and abs(lam - history[-2]) < tol * abs(history[-2]):
                converged = True
                break
            if shift != 0.0:
                hv = [h - shift * x for h, x in zip(hv, v)]
            norm = _norm(hv)
            if norm == 0.0:  # (H - shift I) v = 0: v is an eigenvector with eigenvalue shift (H = 0 for shift = 0)
                converged = True
                break
            v = [x / norm for x in hv]
    finally:
        release()
    return EigenResult(
        eigenvalue=history[-1],
        iterations=len(history),
        converged=converged,
        history=tuple(history),
        eigenvector=v if return_vector else None,
    )


def hessian_top_eigenvalue(
    loss_fn: LossFn,
    params: Params,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    counter: PassCounter | None = None,
    reuse_graph: bool = True,
    shift: float = 0.0,
) -> float:
    """``hessian_top_eigen(...).eigenvalue``: the Rayleigh quotient after power iteration (see there)."""
    return hessian_top_eigen(
        loss_fn, params, iters=iters, tol=tol, seed=seed, counter=counter, reuse_graph=reuse_graph, shift=shift
    ).eigenvalue


def hutchinson_trace(
    loss_fn: LossFn,
    params: Params,
    *,
    samples: int = 20,
    seed: int = 0,
    counter: PassCounter | None = None,
    reuse_graph: bool = True,
) -> TraceEstimate:
    """Hutchinson's estimate of tr(H) with Rademacher probes.

    tr(H) ~= (1/n) sum_i v_i^T H v_i with v_i having independent +-1 entries (E[v v^T] = I, so every term is unbiased);
    standard error = std(v_i^T H v_i, ddof=1) / sqrt(n). Probes come from ``torch.Generator().manual_seed(seed)``.
    Returns ``TraceEstimate(estimate, standard_error)`` (a 2-tuple; ``.values`` holds the n terms). Costs n HVPs.
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    plist = _param_list(params)
    gen = _generator(seed)
    apply, release = _operator(loss_fn, plist, counter, reuse_graph)
    values: list[float] = []
    try:
        for _ in range(samples):
            v = _rademacher_like(plist, gen)
            values.append(_dot(v, apply(v)))
    finally:
        release()
    mean, se = _mean_se(values)
    return TraceEstimate(mean, se, values)
