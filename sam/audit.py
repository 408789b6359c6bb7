"""Which update does my loop compute? `which_replay` identifies the rule a user's own training step follows.

    from sam.audit import which_replay
    report = which_replay(step, model, window, loss_fn, rho=0.05)
    print(report)        # every known rule: distance and cosine to what `step` did, scale ratio, meaning
    report.verdict       # "none" | "full" | "last" | "micro" | "last_only" | None

`step(window)` is the user's code for one update on a window of k micro-batches, anything that ends in a torch
optimizer's `step` (sam.SAM, a davda54-style first_step/second_step class, pytorch_optimizer.SAM, a plain AdamW).
The audit

1. snapshots the model (parameters, buffers, gradients, train/eval modes), every live torch optimizer that holds one
   of its parameters (state and param groups) and their LR schedulers, and the RNG;
2. switches dropout off (see `dropout_off`), clears the gradients (as after the previous update's zero_grad) and
   runs `step(window)`, recording with torch's global optimizer step
   pre-hook the gradient every optimizer's `step` is about to use. A SAM wrapper whose own `step` calls its base
   optimizer's `step` fires the hook twice, nested; the last hook inside one outermost call is the base optimizer,
   whose parameters' `.grad` hold the gradient actually stepped with;
3. restores the snapshot and computes the gradient of each rule of `sam.train_step` (module docstring there) from
   the same weights and data with the same rho, through a base optimizer that records `.grad` and moves nothing;
4. restores everything again, bitwise, also when `step` raises.

Comparison, over the parameters the stepping optimizer holds (a missing gradient counts as 0), in float64:
    g = what `step` stepped with, r = a rule's gradient,
    distance = ‖g/‖g‖ − r/‖r‖‖₂     (direction only: 0 = same direction, √2 = orthogonal, 2 = opposite)
    cosine   = <g, r> / (‖g‖ ‖r‖),   scale = ‖g‖ / ‖r‖.
A rule matches when distance ≤ tol (1e-4 suits float32: rounding differences between two codings of one rule are
~1e-7). Matching directions, not lengths, lets a loop that divides its loss by k, clips, or runs under a loss scaler
still be named: its gradient is a positive multiple of the rule's, and `scale` says by how much.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from .optimizer import ETA, SAM
from .train_step import REPLAY_MODES, train_step

TOLERANCE = 1e-4

MEANINGS = {
    "none": "no SAM: plain gradient accumulation, g = Σ a_i ∇L_i(w)",
    "full": "SAM on the whole window: e from ∇L(w), all k micro-batches replayed at w + e (correct)",
    "last": "perturbation from the whole window, gradient from the last micro-batch only — the copied loop's bug",
    "micro": "m-SAM: each micro-batch its own e_i from ∇L_i(w), g = Σ a_i ∇L_i(w + e_i)",
    "last_only": "SAM on the last micro-batch alone, the other k − 1 discarded — the public Trainer pattern's bug",
}
assert tuple(MEANINGS) == REPLAY_MODES


@dataclass(frozen=True)
class RuleMatch:
    """One row of the report: how the gradient `step` used compares with one rule's (module docstring)."""

    rule: str
    distance: float  # ‖g/‖g‖ − r/‖r‖‖; nan when r = 0
    cosine: float
    scale: float  # ‖g‖ / ‖r‖
    meaning: str


@dataclass(frozen=True)
class ReplayReport:
    """What `which_replay` found. `verdict` is the one rule within `tol`, else None (no rule, or several that this
    window cannot tell apart: `matches`); `closest` is the rule of smallest distance either way."""

    verdict: str | None
    closest: str
    matches: tuple[str, ...]
    rows: tuple[RuleMatch, ...]
    k: int
    rho: float
    adaptive: bool
    tol: float
    stepped: str  # class name(s) of the optimizer(s) whose step used the gradient
    rng_advanced: bool  # something random ran inside step although dropout was off

    def row(self, rule: str) -> RuleMatch:
        return next(r for r in self.rows if r.rule == rule)

    def __str__(self) -> str:
        asam = ", ASAM" if self.adaptive else ""
        lines = [
            f"sam.audit: the update `step` computed on a window of k = {self.k} micro-batches "
            f"(rho = {self.rho}{asam}, stepped by {self.stepped}), against every known rule",
            f"  {'rule':<10} {'distance':>9} {'cosine':>10} {'scale':>7}  meaning",
        ]
        for r in self.rows:
            mark = "=>" if r.rule in self.matches else "  "
            lines.append(f"{mark}{r.rule:<10} {r.distance:>9.2e} {r.cosine:>10.6f} {r.scale:>7.3f}  {r.meaning}")
        lines.append(
            f"  distance = ‖g/‖g‖ − r/‖r‖‖ (directions; match ≤ {self.tol:.0e}), scale = ‖g‖/‖r‖, "
            f"g = what step used, r = the rule's gradient"
        )
        if self.verdict is not None:
            lines.append(f"verdict: {self.verdict} — {MEANINGS[self.verdict]}")
            scale = self.row(self.verdict).scale
            if abs(scale - 1.0) > self.tol:
                lines.append(
                    f"scale: step's gradient is {scale:.4g} × the rule's, the same direction (dividing the loss by k, "
                    f"clipping or an unscaled loss scale does this): with SGD the step is {scale:.4g} × as long, as "
                    f"if lr were {scale:.4g} × lr; Adam/AdamW divide a constant factor out (up to eps), a varying one "
                    f"(clipping) changes their moment estimates"
                )
        elif len(self.matches) > 1:
            lines.append(
                f"verdict: None — {', '.join(self.matches)} all match: on this window they are the same update "
                f"(identical micro-batches?); audit on a window of different micro-batches"
            )
        else:
            lines.append(
                f"verdict: None — no known rule matches; closest: {self.closest} at distance "
                f"{self.row(self.closest).distance:.2e} (a different rho, ASAM, or another algorithm?)"
            )
        if self.rng_advanced:
            lines.append(
                "note: the random number generator advanced inside step although dropout was off: something random "
                "ran that the audit does not switch off, so the comparison may not be exact"
            )
        return "\n".join(lines)


def which_replay(
    step: Callable[[Sequence[Any]], Any],
    model: nn.Module,
    window: Sequence[Any],
    loss_fn: Callable[[Any], Tensor],
    *,
    rho: float = 0.05,
    adaptive: bool = False,
    eta: float = ETA,
    asam_weights: str = "shape",
    sizes: Sequence[int] | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    tol: float = TOLERANCE,
) -> ReplayReport:
    """Run `step(window)` once and name the update rule it computed (module docstring); leave everything as it was.

    Args:
        step: the user's code for one update: `step(window)` runs forward/backward passes and ends in exactly one
            update (one optimizer `step`, or a SAM wrapper's step and the base step nested inside it; several
            optimizers on disjoint parameters are one update too).
        model: the module `step` trains; every parameter that requires grad may take part.
        window: the k ≥ 2 micro-batches of one update, in the form `step` and `loss_fn` take.
        loss_fn: `loss_fn(batch) -> Tensor`, the mean loss of one micro-batch on `model` (forward only), used for
            the reference rules through `sam.train_step`.
        rho: SAM's radius the reference rules use (that of the user's SAM).
        adaptive, eta: ASAM for the reference rules, e = rho·T²g/‖Tg‖ with T = |w| + eta for a weight, T = 1
            otherwise.
        asam_weights: which tensors count as weights for ASAM: "shape" (default: ndim ≥ 2, what
            `sam.SAM(model.parameters(), adaptive=True)` does, so LayerNorm scales get T = 1) or "name" (a name
            ending in "weight", the authors' rule in SamsungLabs/ASAM, which gives LayerNorm scales |w| + eta).
        sizes: examples per micro-batch, weights a_i = n_i/N of the reference rules (None: 1/k each).
        optimizers: optimizers to snapshot and restore besides those found by themselves (every live
            torch.optim.Optimizer holding one of the model's parameters is found, with its LR schedulers).
        tol: largest direction distance that counts as a match.

    Returns:
        ReplayReport; print it for the table.

    Raises:
        ValueError: a window of fewer than 2 micro-batches, rho ≤ 0, a model without parameters that require
            grad, `step` that never calls an optimizer's step, steps the same parameters in more than one update,
            or steps with no (or a zero) gradient. Any exception of `step` itself propagates unchanged (with a note).
        The model, the optimizers, their schedulers and the RNG are restored bitwise in every case.
    """
    k = len(window)
    if k < 2:
        raise ValueError(
            f"a window of {k} micro-batch{'es' if k != 1 else ''} cannot tell the SAM rules apart (with k = 1, full "
            f"= last = micro = last_only); pass the k >= 2 micro-batches of one accumulated update"
        )
    if not rho > 0:
        raise ValueError(f"rho must be > 0 to tell SAM from plain accumulation, got {rho}")
    if asam_weights not in ("shape", "name"):
        raise ValueError(f"asam_weights={asam_weights!r}; choose 'shape' (sam.SAM's rule) or 'name' (SamsungLabs/ASAM)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no parameter that requires grad: nothing to audit")
    found = _live_optimizers(set(trainable), optimizers)
    snapshot = _Snapshot(model, found)
    try:
        with dropout_off(model):
            # from cleared gradients, as after the previous update's zero_grad: a loop that does not zero them
            # first (the blog's) would otherwise fold whatever was left in .grad into its update
            for p in trainable:
                p.grad = None
            with _StepRecorder(model, set(trainable)) as recorder:
                try:
                    step(window)
                except Exception as error:
                    error.add_note("sam.audit: raised inside step(window); the model and optimizers were restored")
                    raise
            rng_advanced = not snapshot.rng_unchanged()
            gradient, modes, stepped = recorder.resolve()
            params = list(gradient)
            g = [gradient[p] if gradient[p] is not None else torch.zeros_like(p) for p in params]
            del gradient

            def at_w() -> None:  # the weights before step, in the modes step's optimizer stepped in
                snapshot.restore_model()
                for m, mode in modes.items():
                    m.training = mode

            rows = [
                _match(rule, g, r)
                for rule, r in _rule_gradients(
                    model, window, loss_fn, params, rho, adaptive, eta, asam_weights, sizes, at_w
                )
            ]
    finally:
        snapshot.restore()
    matches = tuple(r.rule for r in rows if r.distance <= tol)
    closest = min(rows, key=lambda r: r.distance if not math.isnan(r.distance) else math.inf).rule
    return ReplayReport(
        verdict=matches[0] if len(matches) == 1 else None,
        closest=closest,
        matches=matches,
        rows=tuple(rows),
        k=k,
        rho=rho,
        adaptive=adaptive,
        tol=tol,
        stepped=stepped,
        rng_advanced=rng_advanced,
    )


# ----------------------------------------------------------------------------------------------------------------------
# dropout off


def _is_drop_rate(name: str, value: Any) -> bool:
    # a float (not a bool) attribute named like a drop rate: attention_dropout, dropout, dropout_p, attn_drop,
    # drop_prob (DropPath), layerdrop (LayerDrop)
    return "drop" in name.lower() and isinstance(value, float) and value > 0.0


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Every dropout of `model` at rate 0 inside the block, put back after; `model.train()` cannot undo it.

    Covered: every torch dropout module (nn.Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout: `p` = 0),
    and every float attribute whose name contains "drop" on a submodule and on a submodule's `config`: Hugging Face
    attention modules keep their rate as a float they hand to functional dropout / SDPA (`self.attention_dropout`,
    `self.dropout`, `self.dropout_p`), a few read `self.config.<...>dropout` in the forward, LayerDrop and DropPath
    keep `layerdrop` / `drop_prob`. Dropout at p = 0 draws no random numbers, so a random draw inside `step` means
    something was not covered (the report says so). Not covered: a literal rate in the code (`F.dropout(x, 0.1)`).
    """
    changed: list[tuple[Any, str, Any]] = []
    seen: set[int] = set()
    try:
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
                changed.append((m, "p", m.p))
                m.p = 0.0
            owners = [m]
            config = m.__dict__.get("config")
            if config is not None and hasattr(config, "__dict__"):
                owners.append(config)
            for owner in owners:
                if id(owner) in seen:
                    continue
                seen.add(id(owner))
                for name, value in list(vars(owner).items()):
                    if _is_drop_rate(name, value):
                        changed.append((owner, name, value))
                        setattr(owner, name, 0.0)
        yield
    finally:
        for owner, name, value in reversed(changed):
            setattr(owner, name, value)


# ----------------------------------------------------------------------------------------------------------------------
# snapshot and restore


def _live_optimizers(params: set[Tensor], given: Sequence[torch.optim.Optimizer]) -> list[torch.optim.Optimizer]:
    """Every live torch optimizer that holds one of `params` (found among the garbage collector's objects), plus
    `given`: the ones `step` may change."""
    found = {id(o): o for o in given}
    for obj in gc.get_objects():
        # type(), not isinstance: isinstance reads __class__, which some lazy module objects answer with a warning
        if issubclass(type(obj), torch.optim.Optimizer) and id(obj) not in found:
            groups = obj.__dict__.get("param_groups")
            if groups and any(p in params for g in groups for p in g.get("params", ())):
                found[id(obj)] = obj
    return list(found.values())


def _live_schedulers(optimizers: list[torch.optim.Optimizer]) -> list:
    ids = {id(o) for o in optimizers}
    return [
        obj
        for obj in gc.get_objects()
        if issubclass(type(obj), torch.optim.lr_scheduler.LRScheduler) and id(getattr(obj, "optimizer", None)) in ids
    ]


def _clone(value: Any) -> Any:
    """A deep copy in which every tensor is a fresh clone (optimizer state and hyper-parameters)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        out = copy.copy(value)  # keeps the dict's type (defaultdict, OrderedDict)
        for key in out:
            out[key] = _clone(value[key])
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return copy.deepcopy(value)


class _Snapshot:
    """What `step` may change, as it was: every module's parameter and buffer objects, their storage, values,
    gradients (the same gradient objects), requires_grad and train/eval mode; every optimizer's attributes, param
    groups, state (the same per-parameter dicts and tensors) and dict-valued attributes; the LR schedulers' state;
    the RNG. `restore_model()` / `restore()` put it back, bitwise, as often as needed."""

    def __init__(self, model: nn.Module, optimizers: list[torch.optim.Optimizer]):
        self.modules = [(m, dict(m._parameters), dict(m._buffers), m.training) for m in model.modules()]
        unique = {id(t): t for m, ps, bs, _ in self.modules for t in (*ps.values(), *bs.values()) if t is not None}
        self.tensors = list(unique.values())
        # the storage each tensor had (a davda54-style SAM rebinds `p.data`), its value, its gradient object and value
        self.data = [t.data for t in self.tensors]
        self.values = [t.detach().clone() for t in self.tensors]
        self.grads = [(t.grad, t.grad.detach().clone() if t.grad is not None else None) for t in self.tensors]
        self.requires_grad = [t.requires_grad for t in self.tensors]
        self.optimizers = []
        for o in optimizers:
            attributes = dict(o.__dict__)
            # dict-valued attributes (defaults, sam.SAM's saved copies, hook registries) refilled in place
            dicts = {k: dict(v) for k, v in attributes.items() if isinstance(v, dict) and k != "state"}
            params = [list(g["params"]) for g in o.param_groups]
            groups = [{key: _clone(v) for key, v in g.items() if key != "params"} for g in o.param_groups]
            state = {p: (s, dict(s), _clone(s)) for p, s in o.state.items()}
            self.optimizers.append((o, attributes, dicts, o.param_groups, params, groups, o.state, state))
        self.schedulers = [(s, copy.deepcopy(s.state_dict())) for s in _live_schedulers(optimizers)]
        device = self.tensors[0].device if self.tensors else torch.device("cpu")
        self.cuda_device = device if device.type == "cuda" else None
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if self.cuda_device is not None else None

    def rng_unchanged(self) -> bool:
        same = torch.equal(torch.get_rng_state(), self.cpu_rng)
        if self.cuda_device is not None:
            same = same and torch.equal(torch.cuda.get_rng_state(self.cuda_device), self.cuda_rng)
        return same

    @torch.no_grad()
    def restore_model(self) -> None:
        for m, params, buffers, training in self.modules:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            m.training = training
        for t, data, value, (grad, grad_value), flag in zip(
            self.tensors, self.data, self.values, self.grads, self.requires_grad
        ):
            if t.data.data_ptr() != data.data_ptr() or t.data.shape != data.shape:
                t.data = data
            t.data.copy_(value)
            if grad is not None:
                grad.copy_(grad_value)
            t.grad = grad
            t.requires_grad_(flag)

    @torch.no_grad()
    def restore(self) -> None:
        self.restore_model()
        for o, attributes, dicts, groups_list, params, groups, state_dict, state in self.optimizers:
            o.__dict__.clear()
            o.__dict__.update(attributes)
            for key, content in dicts.items():
                attributes[key].clear()
                attributes[key].update(content)
            groups_list[:] = groups_list[: len(params)]
            for group, ps, saved in zip(groups_list, params, groups):
                group.clear()
                group.update(_clone(saved))
                group["params"] = ps
            # each parameter's state dict back to its object, its tensors' values into the same tensors; entries
            # that `step` added are dropped
            state_dict.clear()
            for p, (obj, refs, saved) in state.items():
                obj.clear()
                for key, value in saved.items():
                    old = refs.get(key)
                    if isinstance(old, Tensor) and old.shape == value.shape and old.dtype == value.dtype:
                        old.copy_(value)
                        obj[key] = old
                    else:
                        obj[key] = _clone(value)
                state_dict[p] = obj
        for s, saved in self.schedulers:
            s.load_state_dict(copy.deepcopy(saved))
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_device is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.cuda_device)


# ----------------------------------------------------------------------------------------------------------------------
# what step stepped with


class _StepRecorder:
    """At every optimizer step (torch's global pre-hook): a clone of the `.grad` of the optimizer's parameters that
    belong to the model, and every module's train/eval mode. The post-hook tracks nesting: a SAM wrapper's step that
    calls its base optimizer's step belongs to one outermost call."""

    def __init__(self, model: nn.Module, params: set[Tensor]):
        self.modules = list(model.modules())
        self.params = params
        # per outermost step, its (optimizer, {param: grad or None}, {module: training}) in the order they fired
        self.calls: list[list[tuple[torch.optim.Optimizer, dict, dict]]] = []
        self.depth = 0
        self.handles: list = []

    def __enter__(self) -> _StepRecorder:
        self.handles = [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]
        return self

    def __exit__(self, *exc) -> bool:
        for handle in self.handles:
            handle.remove()
        return False

    def _pre(self, optimizer, args, kwargs) -> None:
        ours = [p for g in optimizer.param_groups for p in g["params"] if p in self.params]
        grads = {p: p.grad.detach().clone() if p.grad is not None else None for p in ours}
        if self.depth == 0:
            self.calls.append([])
        self.calls[-1].append((optimizer, grads, {m: m.training for m in self.modules}))
        self.depth += 1

    def _post(self, optimizer, args, kwargs) -> None:
        self.depth = max(0, self.depth - 1)

    def resolve(self) -> tuple[dict[Tensor, Tensor | None], dict[nn.Module, bool], str]:
        """(the update's gradient, the modes the model was in, the stepping optimizers' class names): per outermost
        step the last optimizer that fired inside it (the base of a SAM wrapper); several outermost steps are one
        update only when they hold disjoint parameters (two optimizers for two parts of the model)."""
        if not self.calls:
            raise ValueError(
                "step(window) never called an optimizer's step (a GradScaler that found inf/NaN skips it): the audit "
                "identifies the gradient an optimizer steps with"
            )
        gradient: dict[Tensor, Tensor | None] = {}
        names, modes = [], {}
        for call in self.calls:
            optimizer, grads, modes = call[-1]
            if any(p in gradient for p in grads):
                raise ValueError(
                    f"step(window) stepped the same parameters in {len(self.calls)} separate optimizer steps (one per "
                    f"micro-batch?); the audit needs one call of step to be one update"
                )
            gradient.update(grads)
            if grads:
                names.append(type(optimizer).__name__)
        if not gradient:
            raise ValueError(
                "the optimizer that step(window) stepped holds none of the model's parameters: pass the model it trains"
            )
        if all(g is None or not bool(g.any()) for g in gradient.values()):
            raise ValueError("step(window) stepped with no gradient (every .grad None or zero): nothing to identify")
        return gradient, modes, " + ".join(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------------------------------------
# the reference rules


class _RecordGradient(torch.optim.Optimizer):
    """A base optimizer that moves nothing: `step` keeps a clone of every `.grad` (the gradient a rule steps with)."""

    def __init__(self, params, **_: Any):
        super().__init__(params, {})
        self.recorded: dict[Tensor, Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None) -> None:
        self.recorded = {p: p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None}


def _rule_gradients(
    model, window, loss_fn, params, rho, adaptive, eta, asam_weights, sizes, at_w
) -> Iterator[tuple[str, list]]:
    """(rule, its gradient per parameter of `params`) for every rule of sam.train_step, each from the weights
    `at_w()` puts back, through a SAM over `params` alone (the norm in e runs over what the user's optimizer holds)."""
    if adaptive and asam_weights == "name":
        # SamsungLabs/ASAM's rule by name: T = |w| + eta for a "weight", 1 otherwise
        names = {p: n for n, p in model.named_parameters()}
        weights = [p for p in params if names.get(p, "").endswith("weight")]
        others = [p for p in params if not names.get(p, "").endswith("weight")]
        groups = [
            g for g in ({"params": weights, "is_weight": True}, {"params": others, "is_weight": False}) if g["params"]
        ]
    else:
        groups = [{"params": params}]
    reference = SAM(groups, _RecordGradient, rho=rho, adaptive=adaptive, eta=eta)
    for rule in REPLAY_MODES:
        at_w()
        train_step(loss_fn, window, reference, replay=rule, sizes=sizes)
        recorded, reference.base_optimizer.recorded = reference.base_optimizer.recorded, {}
        yield rule, [recorded.get(p, torch.zeros_like(p)) for p in params]


def _match(rule: str, g: list[Tensor], r: list[Tensor]) -> RuleMatch:
    """distance ‖g/‖g‖ − r/‖r‖‖, cosine and scale ‖g‖/‖r‖ in float64 over all tensors (nan when r = 0 or inf)."""
    g_norm, r_norm = _norm(g), _norm(r)
    if not (r_norm > 0 and math.isfinite(r_norm)):
        return RuleMatch(rule, math.nan, math.nan, math.nan, MEANINGS[rule])
    # the difference of the unit vectors directly, not sqrt(2 − 2 cos): no cancellation near a match
    distance = math.sqrt(sum(float(((a.double() / g_norm - b.double() / r_norm) ** 2).sum()) for a, b in zip(g, r)))
    cosine = sum(float((a.double() * b.double()).sum()) for a, b in zip(g, r)) / (g_norm * r_norm)
    return RuleMatch(rule, distance, cosine, g_norm / r_norm, MEANINGS[rule])


def _norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


# ----------------------------------------------------------------------------------------------------------------------
# two loops from the wild, for `python -m sam.audit --example` (and the tests)


def blog_loop(loss_of: Callable[[Any], Tensor], optimizer, accumulation: int, parameters) -> Callable:
    """The blog's SAM-with-accumulation loop (a Korean QA tutorial, davda54/sam's first_step/second_step), as a
    step over one window: its counters, its clip before `first_step`, and its second pass
    `for _ in range(accumulation)` that replays `input`, the loop variable left over from the last micro-batch."""
    first_step = second_step = 0
    parameters = list(parameters)

    def step(window):
        nonlocal first_step, second_step
        for input in window:
            loss = loss_of(input)
            (loss / accumulation).backward()
            first_step += 1
            if first_step % accumulation:
                continue
            torch.nn.utils.clip_grad_norm_(parameters, max_norm=1.0)
            optimizer.first_step(zero_grad=True)
            for _ in range(accumulation):
                second_step += 1
                (loss_of(input) / accumulation).backward()
                if second_step % accumulation == 0:
                    optimizer.second_step(zero_grad=True)

    return step


def trainer_pattern(loss_of: Callable[[Any], Tensor], optimizer: SAM, accumulation: int) -> Callable:
    """The public SAM `Trainer.training_step` override under gradient accumulation, as a step over one window: each
    micro-batch's training_step zeroes the gradients, backpropagates loss / accumulation (the Trainer's scaling),
    perturbs, backpropagates again and restores; the Trainer then steps the (base) optimizer once."""

    def step(window):
        for batch in window:
            optimizer.zero_grad()
            (loss_of(batch) / accumulation).backward()
            optimizer.first_step(zero_grad=True)
            (loss_of(batch) / accumulation).backward()
            optimizer.restore()
        optimizer.base_optimizer.step()
        optimizer.zero_grad()

    return step


def _example(which: str) -> ReplayReport:
    """The audit of one of the two loops on a small regression MLP with dropout, sam.SAM around AdamW."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Dropout(0.1), nn.Linear(32, 2)).train()
    optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3)
    k = 4
    window = [(torch.randn(8, 6), torch.randn(8, 2)) for _ in range(k)]

    def loss_of(batch):
        return nn.functional.mse_loss(model(batch[0]), batch[1])

    if which == "blog":
        step = blog_loop(loss_of, optimizer, k, model.parameters())
    else:
        step = trainer_pattern(loss_of, optimizer, k)
    return which_replay(step, model, window, loss_of, rho=0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam.audit",
        description="Identify the update rule a SAM training loop computes (library: sam.audit.which_replay).",
    )
    parser.add_argument(
        "--example",
        nargs="?",
        const="blog",
        choices=("blog", "trainer"),
        help="audit the blog's copied loop (default) or the public Trainer pattern on a small MLP, print the report",
    )
    args = parser.parse_args(argv)
    if args.example is None:
        parser.print_help()
        return 2
    torch.set_num_threads(1)  # a tiny MLP: a second thread only waits, badly so on a busy machine
    print(_example(args.example))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
