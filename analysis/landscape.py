"""Model-agnostic loss-landscape primitives (torch only).

Every function takes a ``loss_fn`` closure and the parameters to probe:

* ``loss_fn()`` takes no arguments and returns a scalar loss over *fixed* data. The model must be in eval mode (no
  dropout) and in fp32, so that the same weights always give the same loss. For Hessian-vector products a transformers
  model has to be loaded with ``attn_implementation="eager"``: the fused (SDPA / flash) attention kernels have no
  double backward, on CPU as on CUDA.
* ``params`` is either a sequence of tensors or a mapping ``name -> tensor`` (``dict(model.named_parameters())``).
  Take them from ``model.named_parameters()`` only: buffers (``position_ids``, ``token_type_ids``) are not weights and
  are never perturbed. The same tensor may not appear twice.

Contract kept by every function here:

* the parameters are restored **bitwise** afterwards: a copy is saved first and ``copy_``-ed back (never "subtract the
  perturbation again", which drifts in floating point), also when ``loss_fn`` raises;
* ``.grad`` of the parameters is never touched: gradients come from ``torch.autograd.grad``;
* all randomness comes from an explicit ``seed`` through a CPU ``torch.Generator`` (the draws are then moved to the
  parameter's device and dtype), so the same seed gives the same numbers on every device;
* plain loss evaluations run under ``torch.no_grad``;
* an optional :class:`PassCounter` is incremented with the forward, backward and Hessian-vector-product passes used.

Example closure for an extractive-QA checkpoint (what the CLI builds)::

    model = AutoModelForQuestionAnswering.from_pretrained(path, attn_implementation="eager").float().eval()
    batches = [...]  # a fixed list of tokenised dev batches with start/end positions

    def loss_fn():
        total = sum(model(**b).loss * len(b["input_ids"]) for b in batches)
        return total / sum(len(b["input_ids"]) for b in batches)

    params = dict(model.named_parameters())
    counter = PassCounter()
    lam = hessian_top_eigenvalue(loss_fn, params, counter=counter)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

LossFn = Callable[[], Tensor]
Params = Sequence[Tensor] | Mapping[str, Tensor]
Vectors = Sequence[Tensor] | Mapping[str, Tensor]

#: Names whose parameters get a zero filter-normalised direction (matched with ``re.search``).
DEFAULT_EXCLUDE: tuple[str, ...] = (r"LayerNorm", r"layer_norm", r"layernorm")

__all__ = [
    "DEFAULT_EXCLUDE",
    "PassCounter",
    "EigenResult",
    "TraceEstimate",
    "AverageSharpness",
    "WorstCaseSharpness",
    "preserve_params",
    "hessian_vector_product",
    "hessian_top_eigen",
    "hessian_top_eigenvalue",
    "hutchinson_trace",
    "average_adaptive_sharpness",
    "worst_case_adaptive_sharpness",
    "filter_normalized_direction",
    "loss_curve_1d",
    "loss_surface_2d",
    "interpolate",
]


# ----------------------------------------------------------------------------------------------------------------------
# bookkeeping
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class PassCounter:
    """Passes spent by the primitives (pass one counter to several calls to sum them per model).

    * ``forward``: calls of ``loss_fn()`` (with or without a graph);
    * ``backward``: first-order backward passes (``autograd.grad`` of the loss, with or without ``create_graph``);
    * ``hvp``: Hessian-vector products, i.e. double-backward passes (``autograd.grad`` of ``g . v``).

    A Hessian-vector product needs a forward and a graph-keeping backward first; those are counted under
    ``forward``/``backward``. With ``reuse_graph=True`` (default) one forward+backward serves all the products of a
    call.
    """

    forward: int = 0
    backward: int = 0
    hvp: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward, "hvp": self.hvp}

    def __str__(self) -> str:
        return f"forward={self.forward} backward={self.backward} hvp={self.hvp}"


@dataclass(frozen=True)
class EigenResult:
    """Outcome of power iteration: ``eigenvalue`` is the last Rayleigh quotient v^T H v (||v|| = 1)."""

    eigenvalue: float
    iterations: int  # Hessian-vector products used
    converged: bool  # relative change of the Rayleigh quotient fell below tol
    history: tuple[float, ...]  # Rayleigh quotient after every product
    eigenvector: list[Tensor] | None = field(default=None, repr=False, compare=False)


class TraceEstimate(tuple):
    """``(estimate, standard_error)`` of Hutchinson's trace estimator; also has ``.samples`` and ``.values``."""

    def __new__(cls, estimate: float, standard_error: float, values: Sequence[float] = ()):
        obj = super().__new__(cls, (estimate, standard_error))
        obj.values = tuple(values)
        return obj

    @property
    def estimate(self) -> float:
        return self[0]

    @property
    def standard_error(self) -> float:
        return self[1]

    @property
    def samples(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"TraceEstimate(estimate={self[0]!r}, standard_error={self[1]!r}, samples={self.samples})"


@dataclass(frozen=True)
class AverageSharpness:
    """Mean loss increase over random adaptive perturbations of radius ``rho`` (see average_adaptive_sharpness)."""

    rho: float
    mean: float  # mean of L(w + delta) - L(w)
    standard_error: float  # std (ddof=1) / sqrt(samples); nan for one sample
    samples: int
    base_loss: float  # L(w)
    increases: tuple[float, ...] = field(repr=False)


@dataclass(frozen=True)
class WorstCaseSharpness:
    """Largest loss increase found by projected gradient ascent in the adaptive ball of radius ``rho``."""

    rho: float
    increase: float  # max over the visited points of L(w + delta) - L(w); >= 0 is not guaranteed for a non-minimum
    base_loss: float  # L(w)
    max_loss: float  # L(w + delta*) at the best visited point
    adaptive_norm: float  # ||delta* / s||_2 of that point, <= rho (up to rounding)
    delta_norm: float  # ||delta*||_2 in weight space
    steps: int  # ascent steps taken (fewer than asked if the gradient vanished)
    step_size: float  # alpha, in normalised coordinates (= step_size argument * rho)
    losses: tuple[float, ...] = field(repr=False)  # L at the start point and after every step


def _count(counter: PassCounter | None, *, forward: int = 0, backward: int = 0, hvp: int = 0) -> None:
    if counter is not None:
        counter.forward += forward
        counter.backward += backward
        counter.hvp += hvp


def _param_list(params: Params) -> list[Tensor]:
    """The tensors of ``params`` in order (mapping values or the sequence itself); duplicates are an error."""
    if isinstance(params, Mapping):
        tensors = list(params.values())
    elif isinstance(params, Tensor):
        tensors = [params]
    else:
        tensors = list(params)
    if not tensors:
        raise ValueError("no parameters given")
    seen: set[int] = set()
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"parameters must be tensors, got {type(t).__name__}")
        if id(t) in seen:
            raise ValueError("the same parameter tensor appears twice (tied weights?): pass it once")
        seen.add(id(t))
    return tensors


def _aligned(params: Params, other: Vectors, what: str) -> list[Tensor]:
    """``other`` as a list aligned with ``_param_list(params)``, checked for structure and shapes (no silent skips)."""
    plist = _param_list(params)
    if isinstance(params, Mapping):
        if not isinstance(other, Mapping):
            raise TypeError(f"params is a mapping, so {what} must be a mapping with the same names")
        missing = [k for k in params if k not in other]
        extra = [k for k in other if k not in params]
        if missing or extra:
            raise KeyError(f"{what} does not match params: missing {missing[:5]}, extra {extra[:5]}")
        olist = [other[k] for k in params]
    else:
        if isinstance(other, Mapping):
            raise TypeError(f"params is a sequence, so {what} must be a sequence aligned with it")
        olist = [other] if isinstance(other, Tensor) else list(other)
        if len(olist) != len(plist):
            raise ValueError(f"{what} has {len(olist)} tensors for {len(plist)} parameters")
    for i, (p, o) in enumerate(zip(plist, olist)):
        if tuple(o.shape) != tuple(p.shape):
            raise ValueError(f"{what}[{i}] has shape {tuple(o.shape)}, parameter has {tuple(p.shape)}")
    return [o.detach().to(device=p.device, dtype=p.dtype) for p, o in zip(plist, olist)]


@contextlib.contextmanager
def preserve_params(params: Params) -> Iterator[list[Tensor]]:
    """Save a copy of the parameters, yield it, and ``copy_`` it back on exit (bitwise restore, also on errors)."""
    plist = _param_list(params)
    with torch.no_grad():
        saved = [p.detach().clone() for p in plist]
    try:
        yield saved
    finally:
        with torch.no_grad():
            for p, s in zip(plist, saved):
                p.copy_(s)


def _loss_value(loss_fn: LossFn, counter: PassCounter | None) -> float:
    """``float(loss_fn())`` without a graph."""
    with torch.no_grad():
        loss = loss_fn()
    _count(counter, forward=1)
    return float(_check_scalar(loss))


def _check_scalar(loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TypeError("loss_fn() must return a scalar tensor")
    return loss.reshape(())


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Inner product of two tensor lists, accumulated in Python float (double)."""
    return sum(float(torch.dot(x.reshape(-1), y.reshape(-1))) for x, y in zip(a, b))


def _norm(a: Sequence[Tensor]) -> float:
    return math.sqrt(max(_dot(a, a), 0.0))


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _gaussian_like(plist: Sequence[Tensor], gen: torch.Generator) -> list[Tensor]:
    """Standard normal draws shaped like ``plist`` (drawn on CPU in fp32, in order, then moved to each parameter)."""
    return [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype) for p in plist]


def _rademacher_like(plist: Sequence[Tensor], gen: torch.Generator) -> list[Tensor]:
    """Independent +-1 entries with probability 1/2 each, shaped like ``plist``."""
    return [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device=p.device, dtype=p.dtype) for p in plist]


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


# ----------------------------------------------------------------------------------------------------------------------
# adaptive sharpness
# ----------------------------------------------------------------------------------------------------------------------
def _scales(plist: Sequence[Tensor], eta: float) -> list[Tensor]:
    """s = |w| + eta, the elementwise scale of the adaptive ball (taken from the unperturbed weights)."""
    return [p.detach().abs() + eta for p in plist]


def _set_perturbed(plist: Sequence[Tensor], base: Sequence[Tensor], scales: Sequence[Tensor], u: Sequence[Tensor]):
    """w <- w0 + s * u, written from the saved copy (no accumulation of rounding)."""
    with torch.no_grad():
        for p, b, s, x in zip(plist, base, scales, u):
            p.copy_(torch.addcmul(b, s, x))


def _reset(plist: Sequence[Tensor], base: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for p, b in zip(plist, base):
            p.copy_(b)


def _check_rhos(rhos: Iterable[float]) -> list[float]:
    out = [float(r) for r in rhos]
    if not out or any(not math.isfinite(r) or r < 0 for r in out):
        raise ValueError(f"rhos must be a non-empty list of finite values >= 0, got {out}")
    if len(set(out)) != len(out):
        raise ValueError(f"rhos has duplicates: {out}")
    return out


def average_adaptive_sharpness(
    loss_fn: LossFn,
    params: Params,
    rhos: Iterable[float],
    *,
    samples: int = 10,
    seed: int = 0,
    eta: float = 0.0,
    normalization: str = "ball",
    antithetic: bool = True,
    counter: PassCounter | None = None,
) -> dict[float, AverageSharpness]:
    """Average-case adaptive sharpness E_delta[L(w + delta) - L(w)] for every rho (Kwon et al. 2021 scaling).

    delta = rho * s (*) z_hat with the elementwise scale s = |w| + eta (eta = 0: a weight that is exactly 0 is never
    perturbed), z ~ N(0, I) over all the given parameters, and

    * ``normalization="ball"`` (default): z_hat = z / ||z||_2 (norm over the coordinates with s > 0), so
      ||delta / s||_2 = rho exactly: delta is uniform on the sphere of the same adaptive ball
      {delta : ||delta / s||_2 <= rho} that worst_case_adaptive_sharpness maximises over, and ``rho`` means the same
      in both. For a quadratic with Hessian H: mean = rho^2 / (2 d) * tr(S H S), S = diag(s), d = #(s > 0).
    * ``normalization="elementwise"``: z_hat = z, i.e. delta_j ~ N(0, (rho s_j)^2) independently (the average-case
      definition of Andriushchenko et al. 2023); then ||delta / s||_2 ~ rho * sqrt(d), so use much smaller rhos.

    Scale: with "ball" every weight moves by about rho / sqrt(d) of its size, so random directions need radii about
    sqrt(d) times larger than the worst case needs for a visible increase (d = 22.6M for MiniLM: sqrt(d) ~ 4750).
    "elementwise" with rho = 0.01 is the same perturbation as "ball" with rho = 0.01 * sqrt(d), up to ||z|| ~ sqrt(d).

    ``antithetic=True`` (default) evaluates every draw in pairs: the sample is (L(w + delta) + L(w - delta)) / 2 - L(w).
    Same expectation (delta and -delta are equally likely), but the first-order term g . delta cancels exactly, which
    otherwise dominates the variance at small rho whenever the gradient on the evaluation data is not zero (always, for
    dev data). The same ``samples`` draws of z (from ``seed``) are reused for every rho (common random numbers: the
    curve over rho is smooth). L(w) is evaluated once. Costs 1 + samples * len(rhos) * (2 if antithetic else 1)
    forwards. Returns ``{rho: AverageSharpness(mean, standard_error = std(ddof=1)/sqrt(samples), ...)}`` with one
    entry in ``increases`` per draw (per pair when antithetic).
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    if normalization not in ("ball", "elementwise"):
        raise ValueError('normalization must be "ball" or "elementwise"')
    rho_list = _check_rhos(rhos)
    plist = _param_list(params)
    gen = _generator(seed)
    increases: dict[float, list[float]] = {r: [] for r in rho_list}
    with preserve_params(plist) as base:
        base_loss = _loss_value(loss_fn, counter)
        scales = _scales(base, eta)
        for _ in range(samples):
            z = [x * (s > 0) for x, s in zip(_gaussian_like(plist, gen), scales)]
            if normalization == "ball":
                nz = _norm(z)
                z = [x / nz for x in z] if nz > 0 else z
            for r in rho_list:
                _set_perturbed(plist, base, scales, [x * r for x in z])
                up = _loss_value(loss_fn, counter)
                if antithetic:
                    _set_perturbed(plist, base, scales, [x * -r for x in z])
                    up = 0.5 * (up + _loss_value(loss_fn, counter))
                increases[r].append(up - base_loss)
    out = {}
    for r in rho_list:
        mean, se = _mean_se(increases[r])
        out[r] = AverageSharpness(r, mean, se, samples, base_loss, tuple(increases[r]))
    return out


def worst_case_adaptive_sharpness(
    loss_fn: LossFn,
    params: Params,
    rhos: Iterable[float],
    *,
    steps: int = 5,
    step_size: float | None = None,
    seed: int = 0,
    init_radius: float | None = 0.1,
    eta: float = 0.0,
    counter: PassCounter | None = None,
) -> dict[float, WorstCaseSharpness]:
    """Worst-case adaptive sharpness max_{||delta / s||_2 <= rho} L(w + delta) - L(w), by projected gradient ascent.

    Works in normalised coordinates u = delta / s (s = |w| + eta, elementwise; coordinates with s = 0 are fixed at 0),
    where the constraint is the Euclidean ball ||u||_2 <= rho:

    * start: u_0 = init_radius * rho * z / ||z||, z ~ N(0, I) from ``seed`` (the same direction for every rho);
      ``init_radius=None`` draws the radius uniformly in the ball instead (rho * U(0,1)^(1/d), i.e. ~rho in high
      dimension). The default 0.1 keeps the start near w, so the first steps follow the gradient (a SAM-like step) and
      5 steps reach >= 96% of the exact maximum on test quadratics, where a start on the sphere reaches ~70-95%;
    * ``steps`` times: g_u = s (*) grad L(w + s (*) u_t) (chain rule), u_{t+1} = P(u_t + alpha * g_u / ||g_u||_2),
      where P rescales u to norm rho when ||u|| > rho; alpha = ``step_size`` * rho, i.e. ``step_size`` is in units
      of the radius (default 2 / steps, so alpha = 2 * rho / steps and the ascent can cross the ball once);
    * the result is the largest L over the visited points u_0..u_steps minus L(w) (each is feasible, so it is a lower
      bound on the true maximum). Stops early if g_u = 0.

    Costs per rho: ``steps`` forward+backward passes and one forward, plus one forward for L(w).
    Returns ``{rho: WorstCaseSharpness(increase, adaptive_norm = ||delta*/s|| <= rho, delta_norm, ...)}``.
    """
    if steps < 0:
        raise ValueError("steps must be >= 0")
    rho_list = _check_rhos(rhos)
    plist = _param_list(params)
    out: dict[float, WorstCaseSharpness] = {}
    with preserve_params(plist) as base:
        base_loss = _loss_value(loss_fn, counter)
        scales = _scales(base, eta)
        masks = [s > 0 for s in scales]
        d = sum(int(m.sum()) for m in masks)
        gen = _generator(seed)
        z = [x * m for x, m in zip(_gaussian_like(plist, gen), masks)]
        r01 = float(torch.rand((), generator=gen, dtype=torch.float64))
        radius = r01 ** (1.0 / max(d, 1)) if init_radius is None else float(init_radius)
        nz = _norm(z)
        direction = [x / nz for x in z] if nz > 0 else z
        for rho in rho_list:
            rel = (2.0 / steps if steps > 0 else 0.0) if step_size is None else float(step_size)
            alpha = rel * rho
            u = [x * (rho * radius) for x in direction]
            losses: list[float] = []
            best = (-math.inf, u)
            taken = 0
            for t in range(steps + 1):
                _set_perturbed(plist, base, scales, u)
                if t == steps:  # last point: value only
                    losses.append(_loss_value(loss_fn, counter))
                else:
                    with torch.enable_grad():
                        loss = _check_scalar(loss_fn())
                        _count(counter, forward=1)
                        grads = (
                            torch.autograd.grad(loss, plist, allow_unused=True)
                            if loss.requires_grad
                            else (None,) * len(plist)
                        )
                        _count(counter, backward=int(loss.requires_grad))
                    losses.append(float(loss.detach()))
                if math.isnan(losses[-1]):  # a diverging point: report nan rather than a misleading maximum
                    best = (math.nan, u)
                    break
                if losses[-1] > best[0]:
                    best = (losses[-1], u)
                if t == steps:
                    break
                # chain rule for delta = s * u (zero where s = 0, so those coordinates never move)
                g_u = [torch.zeros_like(s) if g is None else g.detach() * s for g, s in zip(grads, scales)]
                gnorm = _norm(g_u)
                if gnorm == 0.0:
                    break
                u = [x + (alpha / gnorm) * g for x, g in zip(u, g_u)]
                unorm = _norm(u)
                if unorm > rho:
                    u = [x * (rho / unorm) for x in u]
                taken += 1
            max_loss, u_best = best
            out[rho] = WorstCaseSharpness(
                rho=rho,
                increase=max_loss - base_loss,
                base_loss=base_loss,
                max_loss=max_loss,
                adaptive_norm=_norm(u_best),
                delta_norm=_norm([s * x for s, x in zip(scales, u_best)]),
                steps=taken,
                step_size=alpha,
                losses=tuple(losses),
            )
            _reset(plist, base)
    return out


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
