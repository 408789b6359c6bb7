"""The QA-specific half of the sharpness CLI: checkpoints, fixed data subsets, and the measurements of one model.

Everything here reads a run's files (``config.yaml``, ``checkpoint/final/``) and never writes into a run directory.
The data are rebuilt the way the run built them (``experiments.data``: the same examples, tokenizer and windows); the
training loop itself is not imported.

    cfg = load_run_config(run_dir)                     # the run's resolved, validated config
    data = build_subsets(cfg, train=32, dev=32, landscape=8, hessian=8, seed=0)
    model = load_qa_model(run_dir)                     # eager attention, fp32, eval mode
    loss = qa_loss_fn(model, data.landscape, batch_size=32)  # closure for analysis.landscape

The loss is the training objective, ``experiments.qa_loss.span_loss``: the mean of the start and end token
cross-entropies over real tokens (padding masked out of the softmax), averaged over the features of the subset (each
forward chunk weighted by its size). The model is in eval mode (dropout off), so the same weights always give the same
loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from analysis.landscape import (
    PassCounter,
    average_adaptive_sharpness,
    filter_normalized_direction,
    hessian_lanczos,
    hessian_vector_product,
    hutchinson_trace,
    interpolate,
    loss_curve_1d,
    loss_surface_2d,
    worst_case_adaptive_sharpness,
)
from analysis.sharpness.options import SharpnessError, alphas, rho_key
from experiments.config import ConfigError, load_config
from experiments.data.features import FEATURE_COLUMNS, MODEL_INPUTS
from experiments.model import ModelError, load_checkpoint, load_tokenizer
from experiments.qa_loss import span_loss
from experiments.run_data import tokenize_splits
from experiments.rundir import CONFIG_FILE, checkpoint_dir

# the columns a QA model takes (inputs and labels); token_type_ids only where the tokenizer makes them
# config keys that must agree across the runs of a sweep for one shared data subset to make sense
SHARED_KEYS = ("data", "model.name_or_path")


# ---------------------------------------------------------------------------------------------------------------------
# configs and data


def load_run_config(run_dir: str | Path):
    """The run's resolved config (``config.yaml``), validated by experiments.config; SharpnessError if unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        return load_config([path])
    except ConfigError as err:
        raise SharpnessError(f"{path}: {err}") from None


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tuple(node) if isinstance(node, (list, tuple)) else node}


def shared_settings(cfg) -> dict[str, Any]:
    """The flattened values of SHARED_KEYS (data block, model name) of a config."""
    out: dict[str, Any] = {}
    for key in SHARED_KEYS:
        value = OmegaConf.select(cfg, key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        out.update(_flat({key: value}))
    return out


def check_same_data(configs: Mapping[str, Any]) -> None:
    """Refuse (SharpnessError) when the runs do not share their data settings and model: one subset serves them all."""
    items = list(configs.items())
    if not items:
        return
    first_id, first_cfg = items[0]
    reference = shared_settings(first_cfg)
    for run_id, cfg in items[1:]:
        mine = shared_settings(cfg)
        for key in sorted(set(reference) | set(mine)):
            if reference.get(key) != mine.get(key):
                raise SharpnessError(
                    f"the runs of this sweep do not share their data settings: {key}={mine.get(key)!r} in {run_id} "
                    f"but {reference.get(key)!r} in {first_id}; measure them as separate sweeps"
                )


@dataclass
class Subsets:
    """Fixed feature subsets (CPU tensors) shared by every model of a sweep.

    ``train`` / ``dev``: the seeded subsets for the train and dev loss. ``landscape`` / ``landscape_dev``: their
    first ``landscape`` features, for the measures that need many passes (adaptive sharpness, curves, surfaces,
    interpolation). ``hessian``: the first ``hessian`` features of ``train``, for lambda_max and the trace.
    """

    train: dict[str, Tensor]
    dev: dict[str, Tensor]
    landscape: dict[str, Tensor]
    landscape_dev: dict[str, Tensor]
    hessian: dict[str, Tensor]
    train_total: int  # features in the full split
    dev_total: int
    train_index: list[int] = field(default_factory=list)  # positions in the full split
    dev_index: list[int] = field(default_factory=list)

    @staticmethod
    def size(batch: Mapping[str, Tensor]) -> int:
        return int(next(iter(batch.values())).shape[0])


def _pick(n_total: int, n: int, seed: int) -> list[int]:
    """n positions out of n_total, drawn without replacement from a CPU generator seeded by `seed`."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randperm(n_total, generator=generator)[: min(n, n_total)].tolist()


def _tensors(dataset, index: Sequence[int]) -> dict[str, Tensor]:
    rows = dataset.select(list(index))
    return {c: torch.from_numpy(np.asarray(rows[c], dtype=np.int64)) for c in FEATURE_COLUMNS if c in rows.column_names}


def _head(batch: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
    return {k: v[:n] for k, v in batch.items()}


def build_subsets(cfg, *, train: int, dev: int, landscape: int, hessian: int, seed: int) -> Subsets:
    """The seeded train/dev feature subsets of a run's data, built as the run built them (same examples, tokenizer,
    max_seq_length and doc_stride). Train positions come from a generator seeded by `seed`, dev positions from one
    seeded by `seed + 1`; the landscape and Hessian subsets are prefixes of those (see Subsets)."""
    try:
        tokenizer = load_tokenizer(cfg.model.name_or_path)
        # as the run did: records the tokenizer cannot handle are skipped (data.strict=false) or refused by name
        _, _, train_ds, dev_ds, _ = tokenize_splits(cfg.data, tokenizer)
    except ValueError as err:  # DataError, ModelError
        raise SharpnessError(f"cannot rebuild the sweep's data: {str(err).splitlines()[0]}") from None
    if len(train_ds) == 0 or len(dev_ds) == 0:
        raise SharpnessError(f"the sweep's data has no features (train {len(train_ds)}, dev {len(dev_ds)})")
    train_index = _pick(len(train_ds), train, seed)
    dev_index = _pick(len(dev_ds), dev, seed + 1)
    train_t, dev_t = _tensors(train_ds, train_index), _tensors(dev_ds, dev_index)
    return Subsets(
        train_t,
        dev_t,
        _head(train_t, landscape),
        _head(dev_t, landscape),
        _head(train_t, hessian),
        len(train_ds),
        len(dev_ds),
        train_index,
        dev_index,
    )


# ---------------------------------------------------------------------------------------------------------------------
# models and losses


def load_qa_model(run_dir: str | Path, *, which: str = "final") -> torch.nn.Module:
    """``checkpoint/<which>/`` of a run as an fp32 eval-mode QA model with eager attention (needed for double
    backward). Reads only."""
    try:
        return load_checkpoint(checkpoint_dir(run_dir, which), attn_implementation="eager")
    except ModelError as err:  # the folder cannot be loaded, or lacks weights of its own architecture
        raise SharpnessError(str(err)) from None


def qa_loss_fn(model: torch.nn.Module, batch: Mapping[str, Tensor], batch_size: int) -> Callable[[], Tensor]:
    """A closure: the training loss (`span_loss`, mean of start and end cross-entropy over real tokens) over the whole
    `batch`, computed in chunks of `batch_size` features and averaged with each chunk weighted by its size."""
    n = Subsets.size(batch)
    chunks = [{k: v[i : i + batch_size] for k, v in batch.items()} for i in range(0, n, batch_size)]

    def loss_fn() -> Tensor:
        total = None
        for chunk in chunks:
            out = model(**{k: v for k, v in chunk.items() if k in MODEL_INPUTS})
            loss = span_loss(
                out.start_logits,
                out.end_logits,
                chunk["attention_mask"],
                chunk["start_positions"],
                chunk["end_positions"],
            )
            part = loss * Subsets.size(chunk)
            total = part if total is None else total + part
        return total / n

    return loss_fn


def plain_loss(loss_fn: Callable[[], Tensor], counter: PassCounter | None = None) -> float:
    with torch.no_grad():
        value = float(loss_fn())
    if counter is not None:
        counter.forward += 1
    return value


def named_params(model: torch.nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name (never buffers), in the model's order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------------------------------
# one model


def trace_is_reliable(estimate: float, standard_error: float, max_rel_se: float) -> bool:
    """A Hutchinson trace is used (tables, verdicts, tau) only when SE <= max_rel_se * |estimate|: with the default
    0.5 the estimate lies at least 2 SE from 0, so at least its sign is known. One probe (no SE) is never enough."""
    if not (math.isfinite(estimate) and math.isfinite(standard_error)):
        return False
    return bool(standard_error <= max_rel_se * abs(estimate))


def measure_model(
    model: torch.nn.Module, data: Subsets, opts: Any, *, hessian: bool, surface: bool, counter: PassCounter
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every measure of one model: returns (row of scalars, curves).

    ``opts`` holds the CLI settings (options.SharpnessConfig). The row has train_loss and dev_loss (on
    the train and dev subsets) and their difference ``gap``; on the Hessian subset lambda_max by Lanczos with its
    relative residual, whether it converged (residual <= eigen_tol), its Lanczos steps and products, and the
    Hutchinson trace ± SE with its probe count and whether it is precise enough (trace_is_reliable); NaN / None
    when ``hessian`` is False; the average- and worst-case adaptive sharpness per rho on the landscape subset.
    ``curves`` = {"curve_1d": [[loss per alpha] per direction], "surface": [[loss]] or None}, landscape subset.
    """
    params = named_params(model)
    row: dict[str, Any] = {}
    row["train_loss"] = plain_loss(qa_loss_fn(model, data.train, opts.batch_size), counter)
    row["dev_loss"] = plain_loss(qa_loss_fn(model, data.dev, opts.batch_size), counter)
    row["gap"] = row["dev_loss"] - row["train_loss"]

    nan = math.nan
    row.update(
        lambda_max=nan,
        lambda_max_residual=nan,
        lambda_max_converged=None,
        lambda_max_iters=0,
        lambda_max_hvp=0,
        trace=nan,
        trace_se=nan,
        trace_probes=0,
        trace_reliable=None,
    )
    hess_fn = qa_loss_fn(model, data.hessian, opts.batch_size)
    eig = None
    if hessian and opts.eigen_iters > 0:
        # Lanczos finds the largest algebraic eigenvalue also off a minimum (no shifted rerun as power iteration
        # needed), and its Ritz residual says whether it converged
        eig = hessian_lanczos(
            hess_fn,
            params,
            max_steps=opts.eigen_iters,
            tol=opts.eigen_tol,
            seed=opts.seed,
            counter=counter,
            return_basis=opts.trace_samples > 0,  # the trace below deflates the Krylov space
        )
        row.update(
            lambda_max=eig.eigenvalue,
            lambda_max_residual=eig.residual,
            lambda_max_converged=bool(eig.converged),
            lambda_max_iters=eig.steps,
            lambda_max_hvp=eig.hvp,
        )
    if hessian and opts.trace_samples > 0:
        # deflated by the Lanczos basis when there is one: tr(T) exactly plus Hutchinson on the rest (smaller SE);
        # the probes come from seed + 1, independent of the Lanczos start vector (seed)
        trace = hutchinson_trace(
            hess_fn, params, samples=opts.trace_samples, seed=opts.seed + 1, counter=counter, deflation=eig
        )
        eig = None  # frees the basis
        row.update(
            trace=trace.estimate,
            trace_se=trace.standard_error,
            trace_probes=trace.samples,
            trace_reliable=trace_is_reliable(trace.estimate, trace.standard_error, opts.trace_max_rel_se),
        )

    land_fn = qa_loss_fn(model, data.landscape, opts.batch_size)
    for rho in opts.rhos_average:
        row[f"avg_sharpness_rho{rho_key(rho)}"] = nan
        row[f"avg_sharpness_se_rho{rho_key(rho)}"] = nan
    if opts.average_samples > 0:
        average = average_adaptive_sharpness(
            land_fn,
            params,
            opts.rhos_average,
            samples=opts.average_samples,
            seed=opts.seed,
            normalization="elementwise",
            counter=counter,
        )
        for rho, result in average.items():
            row[f"avg_sharpness_rho{rho_key(rho)}"] = result.mean
            row[f"avg_sharpness_se_rho{rho_key(rho)}"] = result.standard_error
    worst = worst_case_adaptive_sharpness(
        land_fn,
        params,
        opts.rhos_worst,
        steps=opts.worst_steps,
        step_size=opts.worst_step_size,
        seed=opts.seed,
        counter=counter,
    )
    for rho, result in worst.items():
        row[f"worst_sharpness_rho{rho_key(rho)}"] = result.increase

    curves: dict[str, Any] = {"curve_1d": [], "surface": None}
    line = alphas(opts.curve_points, opts.curve_span)
    directions = [filter_normalized_direction(params, seed=opts.seed + i) for i in range(opts.curve_directions)]
    for direction in directions:
        curves["curve_1d"].append(loss_curve_1d(land_fn, params, direction, line, counter=counter).tolist())
    if surface:
        d1 = directions[0] if directions else filter_normalized_direction(params, seed=opts.seed)
        d2 = directions[1] if len(directions) > 1 else filter_normalized_direction(params, seed=opts.seed + 1)
        grid = alphas(opts.surface_points, opts.surface_span)
        curves["surface"] = loss_surface_2d(land_fn, params, d1, d2, grid, grid, counter=counter).tolist()
    return row, curves


def interpolation_pair(
    model_a: torch.nn.Module, model_b: torch.nn.Module, data: Subsets, opts: Any, counter: PassCounter
) -> dict[str, list[float]]:
    """L((1 - a) theta_A + a theta_B) on the landscape train and dev subsets for a in [0, 1]
    (``opts.interp_points``), evaluated inside model_a (whose weights are restored afterwards)."""
    params = named_params(model_a)
    other = named_params(model_b)
    if list(params) != list(other) or any(params[k].shape != other[k].shape for k in params):
        raise SharpnessError("cannot interpolate between checkpoints of different architectures")
    theta_a = {k: p.detach().clone() for k, p in params.items()}
    theta_b = {k: p.detach().clone() for k, p in other.items()}
    points = [float(x) for x in np.linspace(0.0, 1.0, opts.interp_points)]
    out = {"alpha": points}
    for name, batch in (("train", data.landscape), ("dev", data.landscape_dev)):
        fn = qa_loss_fn(model_a, batch, opts.batch_size)
        out[name] = interpolate(fn, params, theta_a, theta_b, points, counter=counter).tolist()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# cost


def probe_costs(model: torch.nn.Module, data: Subsets, opts: Any) -> dict[str, float]:
    """Seconds of: one forward on each subset (train, dev, landscape, landscape_dev); one forward+backward on the
    landscape subset; one filter-normalised direction; one Gaussian draw over all weights; one write of all the
    weights (what each perturbed evaluation does first); one Hessian-vector-product call (graph set-up + one
    product) on the Hessian subset. Timed once on `model`, after a warm-up forward."""
    params = named_params(model)
    out: dict[str, float] = {}
    fns = {
        name: qa_loss_fn(model, getattr(data, name), opts.batch_size)
        for name in ("train", "dev", "landscape", "landscape_dev")
    }
    plain_loss(fns["landscape"])  # warm-up (allocator, kernels)
    for name, fn in fns.items():
        start = time.perf_counter()
        plain_loss(fn)
        out[f"forward_{name}"] = time.perf_counter() - start
    start = time.perf_counter()
    torch.autograd.grad(fns["landscape"](), list(params.values()), allow_unused=True)
    out["forward_backward"] = time.perf_counter() - start
    # the per-draw overheads: a filter-normalised direction, a Gaussian draw over all weights
    start = time.perf_counter()
    filter_normalized_direction(params, seed=opts.seed)
    out["direction"] = time.perf_counter() - start
    generator = torch.Generator(device="cpu").manual_seed(opts.seed)
    start = time.perf_counter()
    [torch.randn(p.shape, generator=generator) for p in params.values()]
    out["gaussian"] = time.perf_counter() - start
    # every perturbed evaluation first writes all the weights (w0 + delta, from a saved copy); the second of two
    # writes is timed (the first pays for touching fresh memory)
    with torch.no_grad():
        saved = [p.detach().clone() for p in params.values()]
        for _ in range(2):
            start = time.perf_counter()
            for p, w in zip(params.values(), saved):
                p.copy_(torch.add(w, w, alpha=0.0))
            out["write"] = time.perf_counter() - start
        for p, w in zip(params.values(), saved):
            p.copy_(w)
    out["hvp_call"] = 0.0
    if opts.eigen_iters > 0 or opts.trace_samples > 0:
        probe = {k: torch.ones_like(p) for k, p in params.items()}
        start = time.perf_counter()
        hessian_vector_product(qa_loss_fn(model, data.hessian, opts.batch_size), params, probe)
        out["hvp_call"] = time.perf_counter() - start
    return out
