"""Hessian-vector products, the top Hessian eigenvalue (Lanczos; power iteration) and Hutchinson's trace estimate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from analysis.landscape.core import (
    EigenResult,
    LanczosResult,
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


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].view(t.shape))
        i += t.numel()
    return out


def hessian_lanczos(
    loss_fn: LossFn,
    params: Params,
    *,
    max_steps: int = 30,
    tol: float = 1e-2,
    seed: int = 0,
    counter: PassCounter | None = None,
    verify: bool = True,
    reuse_graph: bool = True,
    return_vector: bool = False,
    return_basis: bool = False,
) -> LanczosResult:
    """The largest (algebraic) Hessian eigenvalue lambda_max by Lanczos on Hessian-vector products.

    Lanczos with full reorthogonalisation (Golub & Van Loan, Matrix Computations, 4th ed., §10.1-10.3): q_1 = z/||z||,
    z ~ N(0, I) from ``torch.Generator().manual_seed(seed)``; step j: w = H q_j, alpha_j = q_j . w,
    w -= Q_j (Q_j^T w) twice (classical Gram-Schmidt twice, which keeps Q orthonormal to working precision),
    beta_j = ||w||, q_{j+1} = w / beta_j. With T_j = tridiag(beta, alpha, beta) = Q_j^T H Q_j and its top
    eigenpair (theta, s), the Ritz pair (theta, y = Q_j s) has the residual ||H y - theta y|| = beta_j |s_j| (the
    same book, eq. 10.1.9). Stop at the first step where beta_j |s_j| <= tol |theta| (or beta_j = 0: Q_j spans an
    invariant subspace and theta is exact), or after ``max_steps``. The largest Ritz value converges to lambda_max
    from below whatever the sign of the other eigenvalues (no shift needed off a minimum, unlike power iteration).

    ``verify=True`` then measures the residual of y with one more product, ||H y - theta y|| / |theta|, and
    ``converged`` is that residual <= tol (rounding can make the estimate optimistic); the residual also bounds the
    error: some eigenvalue of H lies within ||H y - theta y|| of theta (Bauer-Fike for symmetric H).

    Costs ``steps`` (+1 if verified) HVPs plus one forward+backward with ``reuse_graph=True`` (one per product
    otherwise) and memory for ``max_steps`` vectors of the parameters' size in their dtype. ``return_basis`` keeps
    the Krylov basis and tr(T) in the result, for a deflated trace (hutchinson_trace(deflation=...)).
    """
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    if not tol > 0:
        raise ValueError("tol must be > 0")
    plist = _param_list(params)
    dtype, device = plist[0].dtype, plist[0].device
    n = sum(p.numel() for p in plist)
    steps_cap = min(max_steps, n)  # an n-dimensional space has at most n orthonormal vectors
    basis = torch.empty(steps_cap, n, dtype=dtype, device=device)  # rows q_1..q_m; pages are touched as filled
    z = _flat(_gaussian_like(plist, _generator(seed)))
    basis[0] = z / torch.linalg.vector_norm(z.double()).to(dtype)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    res_history: list[float] = []
    theta, ritz, smallest = math.nan, None, math.nan
    apply, release = _operator(loss_fn, plist, counter, reuse_graph)
    hvp = 0
    try:
        for j in range(steps_cap):
            q = basis[j]
            w = _flat(apply(_unflat(q, plist)))
            hvp += 1
            alphas.append(float(torch.dot(q.double(), w.double())))
            done = basis[: j + 1]
            for _ in range(2):  # full reorthogonalisation, "twice is enough" (Parlett)
                w = w - done.T @ (done @ w)
            beta = float(torch.linalg.vector_norm(w.double()))
            evals, evecs = np.linalg.eigh(_tridiagonal(alphas, betas))
            theta, ritz, smallest = float(evals[-1]), evecs[:, -1], float(evals[0])
            estimate = float(abs(beta * ritz[-1]) / abs(theta)) if theta != 0 else math.inf
            history.append(theta)
            res_history.append(estimate)
            # beta at rounding level: the Krylov space is invariant and the Ritz values are eigenvalues
            if estimate <= tol or beta <= 1e-12 * max(abs(a) for a in alphas) or j + 1 == steps_cap:
                break
            betas.append(beta)
            basis[j + 1] = w / beta
        m = len(alphas)
        y = basis[:m].T @ torch.as_tensor(ritz, dtype=dtype, device=device)
        y = y / torch.linalg.vector_norm(y.double()).to(dtype)
        residual = res_history[-1]
        if verify:
            hy = _flat(apply(_unflat(y, plist)))
            hvp += 1
            residual = float(torch.linalg.vector_norm((hy - theta * y).double())) / abs(theta) if theta else math.inf
    finally:
        release()
    return LanczosResult(
        eigenvalue=theta,
        residual=residual,
        converged=bool(residual <= tol),
        steps=len(alphas),
        hvp=hvp,
        verified=verify,
        history=tuple(history),
        residual_history=tuple(res_history),
        smallest=smallest,
        eigenvector=_unflat(y, plist) if return_vector else None,
        basis=basis[: len(alphas)] if return_basis else None,
        basis_trace=float(sum(alphas)),
    )


def _tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> np.ndarray:
    """T_m with diagonal alphas (m) and off-diagonal betas (the first m - 1), float64."""
    m = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    off = np.asarray(betas[: m - 1], dtype=np.float64)
    t[np.arange(m - 1), np.arange(1, m)] = off
    t[np.arange(1, m), np.arange(m - 1)] = off
    return t


def hutchinson_trace(
    loss_fn: LossFn,
    params: Params,
    *,
    samples: int = 20,
    seed: int = 0,
    counter: PassCounter | None = None,
    reuse_graph: bool = True,
    deflation: LanczosResult | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of tr(H) with Rademacher probes.

    tr(H) ~= (1/n) sum_i v_i^T H v_i with v_i having independent +-1 entries (E[v v^T] = I, so every term is unbiased);
    standard error = std(v_i^T H v_i, ddof=1) / sqrt(n). Probes come from ``torch.Generator().manual_seed(seed)``.
    Returns ``TraceEstimate(estimate, standard_error)`` (a 2-tuple; ``.values`` holds the n terms). Costs n HVPs.

    ``deflation``: a hessian_lanczos result with its basis (return_basis=True), Q with orthonormal rows spanning the
    Krylov space, and tr(Q H Q^T) = tr(T). With P = Q^T Q, tr(H) = tr(P H P) + tr((I - P) H (I - P)) (the cross
    terms vanish: tr(P H (I - P)) = tr(H (I - P) P) = 0), so the estimate is tr(T) + (1/n) sum_i u_i^T H u_i with
    u_i = (I - P) v_i, and the SE is that of the second term alone (tr(T) is exact given Q, and Q does not depend on
    the probes). The top eigen-directions, which dominate the variance 2 sum_{i != j} H_ij^2 of the plain estimator,
    are then counted exactly: the deflated Hutchinson estimator (Gambhir, Stathopoulos & Orginos 2017, SIAM J. Sci.
    Comput. 39(2); the same split as Hutch++, Meyer et al. 2021, with a Krylov basis in place of a sketch).
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    plist = _param_list(params)
    gen = _generator(seed)
    apply, release = _operator(loss_fn, plist, counter, reuse_graph)
    values: list[float] = []
    q = None
    if deflation is not None:
        if deflation.basis is None:
            raise ValueError("deflation needs a hessian_lanczos result with return_basis=True")
        q = deflation.basis
        if q.shape[1] != sum(p.numel() for p in plist):
            raise ValueError("the deflation basis does not match the parameters")
    try:
        for _ in range(samples):
            v = _rademacher_like(plist, gen)
            if q is not None:
                flat = _flat(v)
                v = _unflat(flat - q.T @ (q @ flat), plist)
            values.append(_dot(v, apply(v)))
    finally:
        release()
    mean, se = _mean_se(values)
    if q is not None:
        mean += deflation.basis_trace
    return TraceEstimate(mean, se, values)
