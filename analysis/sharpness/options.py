"""The CLI keys of `python -m analysis.sharpness` (SharpnessConfig), their parsing and validation, and `help`."""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.config import ConfigError, is_path_name, is_text_type, parse_value, schema_type, split_key_value
from experiments.rundir import DEFAULT_SWEEP

USAGE = "usage: python -m analysis.sharpness results_dir=DIR sweep=NAME [key=value ...]  (`help` lists the keys)"
NULLABLE = ("hessian_seeds", "worst_step_size", "threads", "max_runs")


@dataclasses.dataclass
class SharpnessConfig:
    """The CLI keys and their defaults. Sizes count features (tokenised windows) of the sweep's data.

    The defaults are the budget of the default sweep (configs/sweep/ablation.yaml: 16-24 MiniLM runs at sequence
    length 64-96) within 5 minutes on a 2-core CPU; sharpness.md states it.
    """

    results_dir: str = "results"
    sweep: str = DEFAULT_SWEEP
    out: str | None = None  # where the csv, sharpness.md and figures go (null: rundir.report_dir, as analysis.report)
    train_examples: int = 32  # seeded train subset: the train loss (one forward per model)
    dev_examples: int = 32  # seeded dev subset: the dev loss (one forward per model)
    landscape_examples: int = 8  # the first N of each subset: adaptive sharpness, 1D/2D curves, interpolation
    hessian_examples: int = 8  # the first N of the train subset: lambda_max and trace (double backward)
    batch_size: int = 32  # features per forward chunk
    eigen_iters: int = 20  # most Lanczos steps (HVPs) for lambda_max, +1 HVP to verify the residual (0: skip)
    eigen_tol: float = 1e-2  # lambda_max converged when ||H y - theta y|| / |theta| <= eigen_tol (Ritz pair theta, y)
    trace_samples: int = 6  # Rademacher probes of Hutchinson's trace, deflated by the Lanczos basis (0: skip)
    trace_max_rel_se: float = 0.5  # a trace is used only when its SE <= this x |trace| (0.5: 2 SE away from 0)
    hessian_seeds: int | None = None  # Hessian measures only on runs of the first N seeds (null: every run)
    rhos_worst: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.05, 0.1])  # ||delta/|w|||_2 <= rho
    rhos_average: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.05, 0.1])  # sigma_j = rho |w_j|
    average_samples: int = 2  # antithetic Gaussian draws per rho (0: skip)
    worst_steps: int = 1  # projected gradient-ascent steps per rho (1: the SAM/ASAM step, then the ball's surface)
    worst_step_size: float | None = None  # ascent step in units of rho; null: 2 / worst_steps
    curve_points: int = 7  # points per 1D curve, alpha in [-curve_span, curve_span]
    curve_directions: int = 3  # filter-normalised directions, seeds seed, seed+1, ... (the same for every model)
    curve_span: float = 1.0
    surface_points: int = (
        7  # 2D contour on an N x N grid (0: none), one per arm: its first seed at the sweep's largest k
    )
    surface_span: float = 1.0
    interp_points: int = 7  # alphas in [0, 1] per interpolation curve (0: none)
    seed: int = 0
    threads: int | None = None  # torch CPU threads of each process (null: torch's default, shared out among the jobs)
    jobs: int = 1  # worker processes measuring models side by side (the Makefile passes JOBS)
    max_runs: int | None = None  # measure only the first N completed runs in (arm, k, seed) order
    dry_run: bool = False  # print the plan and the estimated time, then stop (nothing is written)


# lowest allowed value of each integer key
_MINIMUM = {
    "train_examples": 1,
    "dev_examples": 1,
    "landscape_examples": 1,
    "hessian_examples": 1,
    "batch_size": 1,
    "eigen_iters": 0,
    "trace_samples": 0,
    "hessian_seeds": 1,
    "average_samples": 0,
    "worst_steps": 0,
    "curve_points": 1,
    "curve_directions": 0,
    "surface_points": 0,
    "interp_points": 0,
    "threads": 1,
    "jobs": 1,
    "max_runs": 1,
}


class SharpnessError(RuntimeError):
    """A problem with the sweep or the arguments that stops the sharpness CLI; the message is one line."""


def _defaults() -> dict[str, Any]:
    return dataclasses.asdict(SharpnessConfig())


def parse_args(argv: Sequence[str]) -> SharpnessConfig:
    """key=value arguments → a validated SharpnessConfig. Values are typed by the key's type, as the training CLI
    does (experiments.config.parse_value): text keys (results_dir, sweep, out) as typed, numbers by Python's rules
    (max_runs=010 is 10, not YAML 1.1's octal 8), lists as YAML flow lists ([0.01, 0.1]), null (or nothing) is None.
    Raises SharpnessError (one line) for a malformed argument, an unknown key or a value out of range."""
    known = list(_defaults())
    cfg = OmegaConf.structured(SharpnessConfig)
    OmegaConf.set_struct(cfg, True)
    for arg in argv:
        try:
            key, raw = split_key_value(arg)
        except ValueError:
            raise SharpnessError(f"argument {arg!r} must look like key=value; {USAGE}") from None
        if key not in known:
            raise SharpnessError(f"unknown key {key!r}; known keys: {', '.join(known)}")
        try:
            hint = schema_type(key, SharpnessConfig)
            value = parse_value(raw, hint) if raw.strip() or is_text_type(hint) else None
            OmegaConf.update(cfg, key, value, merge=False)  # converts the text by the field's type
        except (OmegaConfBaseException, ValueError, ConfigError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SharpnessError(f"{key}={raw!r}: {first}") from None
    opts = OmegaConf.to_object(cfg)
    for key in ("results_dir", "sweep"):
        if not getattr(opts, key):
            raise SharpnessError(f"{key} needs a value ({key}=...)")
    if not is_path_name(opts.sweep):
        raise SharpnessError(f"sweep={opts.sweep!r} must be one plain name of letters, digits, . _ - (not . or ..)")
    for key, low in _MINIMUM.items():
        value = getattr(opts, key)
        if value is None and key in NULLABLE:
            continue
        if value is None or value < low:
            raise SharpnessError(
                f"{key}={value!r} is out of range; it must be >= {low}" + (" or null" if key in NULLABLE else "")
            )
    for key in ("rhos_worst", "rhos_average"):
        rhos = list(getattr(opts, key))
        if not rhos or any(not math.isfinite(r) or r <= 0 for r in rhos) or len(set(rhos)) != len(rhos):
            raise SharpnessError(f"{key}={rhos!r} must be a non-empty list of distinct radii > 0")
        setattr(opts, key, sorted(float(r) for r in rhos))
    for key in ("eigen_tol", "trace_max_rel_se", "curve_span", "surface_span"):  # isfinite: inf passes "> 0"
        if not (math.isfinite(getattr(opts, key)) and getattr(opts, key) > 0):
            raise SharpnessError(f"{key}={getattr(opts, key)!r} is out of range; it must be > 0")
    if opts.worst_step_size is not None and not (math.isfinite(opts.worst_step_size) and opts.worst_step_size > 0):
        raise SharpnessError(f"worst_step_size={opts.worst_step_size!r} is out of range; it must be > 0 or null")
    if opts.landscape_examples > min(opts.train_examples, opts.dev_examples):
        raise SharpnessError(
            f"landscape_examples={opts.landscape_examples} must be <= train_examples={opts.train_examples} "
            f"and dev_examples={opts.dev_examples} (the landscape subsets are their first features)"
        )
    if opts.hessian_examples > opts.train_examples:
        raise SharpnessError(
            f"hessian_examples={opts.hessian_examples} must be <= train_examples={opts.train_examples} "
            f"(the Hessian subset is the first features of the train subset)"
        )
    return opts


def help_text() -> str:
    lines = [USAGE, "", "keys and defaults (sizes count features):"]
    for key, value in _defaults().items():
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        lines.append(f"  {key}={shown}")
    return "\n".join(lines)


def alphas(points: int, span: float) -> list[float]:
    """`points` evenly spaced values in [-span, span] (an odd count includes 0 exactly)."""
    if points == 1:
        return [0.0]
    return [float(x) for x in np.linspace(-span, span, points)]


def rho_key(rho: float) -> str:
    """A column-name-safe spelling of a radius: 0.05 -> '0.05'."""
    return f"{rho:g}"
