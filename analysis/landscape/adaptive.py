"""Adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023): the average over random perturbations and the
worst case in the adaptive ball."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from analysis.landscape.core import (
    AverageSharpness,
    LossFn,
    Params,
    PassCounter,
    WorstCaseSharpness,
    _check_scalar,
    _count,
    _gaussian_like,
    _generator,
    _loss_value,
    _mean_se,
    _norm,
    _param_list,
    preserve_params,
)


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
