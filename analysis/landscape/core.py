"""Bookkeeping of the landscape primitives: pass counting, result types, parameter lists and their helpers."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

LossFn = Callable[[], Tensor]
Params = Sequence[Tensor] | Mapping[str, Tensor]
Vectors = Sequence[Tensor] | Mapping[str, Tensor]

#: Names whose parameters get a zero filter-normalised direction (matched with ``re.search``).
DEFAULT_EXCLUDE: tuple[str, ...] = (r"LayerNorm", r"layer_norm", r"layernorm")


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


@dataclass(frozen=True)
class LanczosResult:
    """Outcome of Lanczos on Hessian-vector products (see hessian_lanczos).

    ``eigenvalue`` is the largest Ritz value theta of the last step; ``residual`` is the relative residual
    ||H y - theta y|| / |theta| of its Ritz vector y (||y|| = 1), measured with one more product when ``verified``
    (else the Lanczos estimate beta_m |s_m| / |theta|). ``converged``: residual <= tol.
    """

    eigenvalue: float
    residual: float
    converged: bool
    steps: int  # Lanczos steps = Hessian-vector products of the Krylov basis
    hvp: int  # products used in all (steps, plus 1 when the residual was verified)
    verified: bool  # the residual was measured with an explicit product, not only estimated
    history: tuple[float, ...]  # largest Ritz value after every step
    residual_history: tuple[float, ...]  # the estimated relative residual after every step
    smallest: float = math.nan  # the smallest Ritz value of the last step (an upper bound of lambda_min, unconverged)
    eigenvector: list[Tensor] | None = field(default=None, repr=False, compare=False)
    # with return_basis: the Krylov basis Q (steps x parameters, orthonormal rows) and tr(Q H Q^T) = tr(T) = sum alpha,
    # what hutchinson_trace(deflation=...) needs to estimate only the trace outside span(Q)
    basis: Tensor | None = field(default=None, repr=False, compare=False)
    basis_trace: float = math.nan


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
