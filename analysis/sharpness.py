"""Loss-landscape sharpness of trained checkpoints.

The measurement primitives are model-agnostic and torch-only; they live in :mod:`analysis.landscape` and are
re-exported here, so ``from analysis.sharpness import hessian_top_eigenvalue`` works. Each takes a ``loss_fn()``
closure (no arguments, scalar fp32 loss over fixed data, model in eval mode, eager attention for Hessian products) and
the parameters (``dict(model.named_parameters())``), restores the weights bitwise and counts its passes in an optional
:class:`PassCounter`.

| quantity | function | definition |
|---|---|---|
| lambda_max | ``hessian_top_eigenvalue`` | power iteration on H v, Rayleigh quotient |
| tr(H) | ``hutchinson_trace`` | mean of v^T H v over Rademacher v, with its standard error |
| average adaptive sharpness | ``average_adaptive_sharpness`` | E[L(w + rho s z/||z||) - L(w)], s = abs(w) |
| worst-case adaptive sharpness | ``worst_case_adaptive_sharpness`` | max over ||delta/s|| <= rho, projected ascent |
| 1D / 2D landscape | ``loss_curve_1d``, ``loss_surface_2d`` | along filter-normalised random directions |
| interpolation | ``interpolate`` | L((1 - a) theta_a + a theta_b) |
"""

from analysis.landscape import (
    DEFAULT_EXCLUDE,
    AverageSharpness,
    EigenResult,
    PassCounter,
    TraceEstimate,
    WorstCaseSharpness,
    average_adaptive_sharpness,
    filter_normalized_direction,
    hessian_top_eigen,
    hessian_top_eigenvalue,
    hessian_vector_product,
    hutchinson_trace,
    interpolate,
    loss_curve_1d,
    loss_surface_2d,
    preserve_params,
    worst_case_adaptive_sharpness,
)

__all__ = [
    "DEFAULT_EXCLUDE",
    "AverageSharpness",
    "EigenResult",
    "PassCounter",
    "TraceEstimate",
    "WorstCaseSharpness",
    "average_adaptive_sharpness",
    "filter_normalized_direction",
    "hessian_top_eigen",
    "hessian_top_eigenvalue",
    "hessian_vector_product",
    "hutchinson_trace",
    "interpolate",
    "loss_curve_1d",
    "loss_surface_2d",
    "preserve_params",
    "worst_case_adaptive_sharpness",
]

# The checkpoint CLI (`python -m analysis.sharpness results_dir=... sweep=...`, see the Makefile) goes below.
