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

    model = experiments.model.load_checkpoint(path, attn_implementation="eager")  # fp32, eval mode
    batches = [...]  # a fixed list of tokenised dev batches with start/end positions

    def loss_fn():
        total = sum(model(**b).loss * len(b["input_ids"]) for b in batches)
        return total / sum(len(b["input_ids"]) for b in batches)

    params = dict(model.named_parameters())
    counter = PassCounter()
    lam = hessian_lanczos(loss_fn, params, counter=counter).eigenvalue  # lambda_max, with its residual

Modules: ``core`` (PassCounter, the result types, parameter lists, seeded draws), ``hessian`` (Hessian-vector
products, the top eigenvalue by Lanczos or power iteration, Hutchinson trace), ``adaptive`` (average and worst-case
adaptive sharpness), ``directions`` (filter-normalised directions, 1D/2D loss curves, interpolation). Import from the
package: the names below are its public API; the ``_`` helpers of ``core`` are shared by the modules only.
"""

from analysis.landscape.adaptive import average_adaptive_sharpness, worst_case_adaptive_sharpness
from analysis.landscape.core import (
    DEFAULT_EXCLUDE,
    AverageSharpness,
    EigenResult,
    LanczosResult,
    PassCounter,
    TraceEstimate,
    WorstCaseSharpness,
    preserve_params,
)
from analysis.landscape.directions import filter_normalized_direction, interpolate, loss_curve_1d, loss_surface_2d
from analysis.landscape.hessian import (
    hessian_lanczos,
    hessian_top_eigen,
    hessian_top_eigenvalue,
    hessian_vector_product,
    hutchinson_trace,
)

__all__ = [
    "DEFAULT_EXCLUDE",
    "PassCounter",
    "EigenResult",
    "LanczosResult",
    "TraceEstimate",
    "AverageSharpness",
    "WorstCaseSharpness",
    "preserve_params",
    "hessian_vector_product",
    "hessian_lanczos",
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
