"""SAM the optimizer: the perturbation formula, restoring, missing gradients, state and schedulers."""

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sam import SAM, train_step
from tests.test_sam_train_step import make_data, make_model, mse_fn, rel_err, split

RHO = 0.05


def first_pass(model, x, y):
    model.zero_grad(set_to_none=True)
    mse_fn(model)((x, y)).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("rho", [0.0, 1e-3, 0.05, 2.0])
def test_perturbation_has_norm_rho_and_direction_of_gradient(rho):
    """e = rho · g / ‖g‖  ⇒  ‖e‖ = rho and e ∥ g."""
    model = make_model()
    x, y = make_data(10)
    g = first_pass(model, x, y)
    w = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
    opt.first_step()
    e = [p.detach() - w0 for p, w0 in zip(model.parameters(), w)]
    norm_e = torch.sqrt(sum((t**2).sum() for t in e))
    assert norm_e.item() == pytest.approx(rho, rel=1e-9, abs=1e-15)
    norm_g = torch.sqrt(sum((t**2).sum() for t in g))
    assert_close(e, [rho * t / (norm_g + 1e-12) for t in g], rtol=1e-9, atol=1e-15)


def zero_bias_layer():
    """A linear layer 3 → 2 (float64) whose bias is exactly 0 and whose weight has one exact 0, as a freshly
    initialised QA head has; plus its gradient on a fixed batch."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    with torch.no_grad():
        layer.bias.zero_()
        layer.weight[0, 1] = 0.0
    x = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0]], dtype=torch.float64)
    y = torch.tensor([[0.5, -1.0], [2.0, 0.1]], dtype=torch.float64)
    layer.zero_grad(set_to_none=True)
    ((layer(x) - y) ** 2).mean().backward()
    return layer


@pytest.mark.parametrize("eta", [0.01, 0.0, 0.3])
def test_asam_follows_the_authors_formula_on_a_zero_bias_and_a_zero_weight(eta):
    """ASAM (Kwon et al. 2021; SamsungLabs/ASAM asam.py): T = |w| + eta for weights, T = 1 for biases,
    e = rho · T² g / ‖T g‖, the norm over weights and biases together."""
    rho = 0.5
    layer = zero_bias_layer()
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    gw, gb = layer.weight.grad.clone(), layer.bias.grad.clone()
    assert gb.abs().min() > 0 and gw[0, 1] != 0  # the zero entries do have a gradient

    opt = SAM(layer.parameters(), torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=0.1)
    norm = opt.first_step()

    tw = w.abs() + eta  # T of the weight
    tg_norm = torch.sqrt(((tw * gw) ** 2).sum() + (gb**2).sum())  # T = 1 for the bias
    assert_close(norm, tg_norm, rtol=1e-12, atol=0)
    e_w = rho * tw * tw * gw / (tg_norm + 1e-12)
    e_b = rho * gb / (tg_norm + 1e-12)
    assert_close(layer.weight.detach() - w, e_w, rtol=1e-9, atol=1e-15)
    assert_close(layer.bias.detach() - b, e_b, rtol=1e-9, atol=1e-15)
    # the bias that is exactly 0 moves; the zero weight moves exactly when eta > 0 (rho · eta² · g / ‖Tg‖)
    assert (layer.bias.detach() != 0).all()
    moved = (layer.weight[0, 1] - w[0, 1]).item()
    if eta == 0.0:
        assert moved == 0.0
    else:
        assert moved == pytest.approx(rho * eta**2 * gw[0, 1].item() / tg_norm.item(), rel=1e-9)
    # and ‖T⁻¹ e‖ = rho: the perturbation sits on the boundary of the adaptive ball (a coordinate with T = 0,
    # possible only with eta = 0, has e = 0 and adds nothing)
    inv = torch.sqrt((torch.where(tw > 0, e_w / tw, 0.0) ** 2).sum() + (e_b**2).sum())
    assert inv.item() == pytest.approx(rho, rel=1e-9)


def test_is_weight_flag_of_a_param_group_overrides_the_shape_rule():
    """A group marked is_weight=True scales its vectors by |w| + eta (a LayerNorm scale, as the authors' name rule
    does); is_weight=False makes a matrix a bias (T = 1). Hand formula as above."""
    rho, eta = 0.2, 0.01
    layer = zero_bias_layer()
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    gw, gb = layer.weight.grad.clone(), layer.bias.grad.clone()
    groups = [{"params": [layer.weight], "is_weight": False}, {"params": [layer.bias], "is_weight": True}]
    opt = SAM(groups, torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=0.1)
    opt.first_step()
    tb = b.abs() + eta  # the bias is 0, so T = eta
    norm = torch.sqrt((gw**2).sum() + ((tb * gb) ** 2).sum())
    assert_close(layer.weight.detach() - w, rho * gw / (norm + 1e-12), rtol=1e-9, atol=1e-15)
    assert_close(layer.bias.detach() - b, rho * tb * tb * gb / (norm + 1e-12), rtol=1e-9, atol=1e-15)


def test_perturbation_helper_is_what_first_step_applies():
    """sam.perturbation (used by the gradient-fidelity diagnostic) gives the same e as first_step, ASAM or not,
    from .grad or from a given {param: grad}."""
    from sam.optimizer import perturbation

    for adaptive in (False, True):
        layer = zero_bias_layer()
        before = [p.detach().clone() for p in layer.parameters()]
        grads = {p: p.grad.clone() for p in layer.parameters()}
        opt = SAM(layer.parameters(), torch.optim.SGD, rho=0.3, adaptive=adaptive, lr=0.1)
        e_from_grad, norm_a = perturbation(opt.param_groups)
        e_given, norm_b = perturbation(opt.param_groups, grads)
        norm = opt.first_step()
        for p, w0 in zip(layer.parameters(), before):
            assert_close(p.detach() - w0, e_from_grad[p], rtol=1e-9, atol=1e-15)
            assert torch.equal(e_from_grad[p], e_given[p])
        assert norm_a.item() == norm_b.item() == norm.item()


def test_clipping_before_first_step_changes_nothing():
    """The copied loop clips before first_step: rho·(c g)/‖c g‖ = rho·g/‖g‖, so e is unchanged."""
    x, y = make_data(10)
    moved = []
    for clip in (None, 1e-3):
        model = make_model()
        first_pass(model, x, y)
        if clip:
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            assert total > 10 * clip  # the clipping really scaled the gradient
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
        w = [p.detach().clone() for p in model.parameters()]
        opt.first_step()
        moved.append([p.detach() - w0 for p, w0 in zip(model.parameters(), w)])
    assert_close(moved[0], moved[1], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_second_step_restores_weights_bitwise_before_base_step(dtype):
    """Restore from a saved copy: with lr = 0 the weights after second_step are bitwise the ones before."""
    model = make_model(dtype=dtype)
    x, y = make_data(10, dtype=dtype)
    w = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.7, lr=0.0)
    for _ in range(5):
        first_pass(model, x, y)
        opt.first_step(zero_grad=True)
        assert any(not torch.equal(p, w0) for p, w0 in zip(model.parameters(), w))
        mse_fn(model)((x, y)).backward()
        opt.second_step(zero_grad=True)
        for p, w0 in zip(model.parameters(), w):
            assert torch.equal(p, w0)


def test_bf16_subtraction_would_drift_but_copy_does_not():
    """Why we copy: in bf16, (w + e) - e != w for many entries."""
    torch.manual_seed(0)
    w = torch.randn(10_000).to(torch.bfloat16)
    e = (torch.randn(10_000) * 0.01).to(torch.bfloat16)
    assert not torch.equal((w + e) - e, w)


class TwoHeads(nn.Module):
    """`head_a` gets a gradient only when used; lets one pass skip a parameter."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 4).double()
        self.head_a = nn.Linear(4, 3).double()
        self.head_b = nn.Linear(4, 3).double()

    def forward(self, x, use_a):
        h = torch.tanh(self.body(x))
        return self.head_a(h) if use_a else self.head_b(h)


@pytest.mark.parametrize("first_uses_a,second_uses_a", [(True, False), (False, True)])
def test_parameter_without_gradient_in_one_pass_ends_where_it_started(first_uses_a, second_uses_a):
    torch.manual_seed(0)
    model = TwoHeads()
    x, y = make_data(6)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    ((model(x, first_uses_a) - y) ** 2).mean().backward()
    opt.first_step(zero_grad=True)
    unused_first = "head_b" if first_uses_a else "head_a"
    for n, p in model.named_parameters():
        if n.startswith(unused_first):  # no gradient in the first pass: not perturbed
            assert torch.equal(p, w[n])
    ((model(x, second_uses_a) - y) ** 2).mean().backward()
    opt.second_step(zero_grad=True)
    stepped_second = "head_a" if second_uses_a else "head_b"
    for n, p in model.named_parameters():
        if not (n.startswith(stepped_second) or n.startswith("body")):
            # no gradient in the second pass: restored exactly and not stepped by the base optimizer
            assert torch.equal(p, w[n]), n
    assert not opt.is_perturbed
    # a second update works (no KeyError, no stale e)
    ((model(x, True) - y) ** 2).mean().backward()
    opt.first_step(zero_grad=True)
    ((model(x, True) - y) ** 2).mean().backward()
    opt.second_step(zero_grad=True)


def test_param_groups_are_the_base_optimizers_also_after_load_state_dict():
    model = make_model()
    opt = SAM(
        [{"params": model[0].parameters(), "weight_decay": 0.0}, {"params": model[2].parameters()}],
        torch.optim.AdamW,
        rho=RHO,
        lr=1e-3,
        weight_decay=0.1,
    )
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.param_groups[0]["rho"] == RHO and opt.param_groups[1]["weight_decay"] == 0.1
    state = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(state)
    assert opt.param_groups is opt.base_optimizer.param_groups
    opt.param_groups[0]["lr"] = 0.5  # e.g. a scheduler writing the lr
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 0.1)
    assert opt.base_optimizer.param_groups[1]["lr"] == pytest.approx(1e-4)
    del sched


@pytest.mark.parametrize("replay", ["full", "last", "micro"])
def test_resume_from_state_dict_mid_training_matches_uninterrupted(replay):
    x, y = make_data(24)
    windows = [split(x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8], [4, 4]) for i in range(3)] * 2

    def new(model):
        opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0 / (1 + u))
        return opt, sched

    model = make_model()
    opt, sched = new(model)
    for i, window in enumerate(windows):
        train_step(mse_fn(model), window, opt, replay=replay, max_grad_norm=1.0)
        sched.step()
        if i == 2:
            saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    resumed = make_model(seed=99)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved[0])
    opt2, sched2 = new(resumed)
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    for window in windows[3:]:
        train_step(mse_fn(resumed), window, opt2, replay=replay, max_grad_norm=1.0)
        sched2.step()
    for p, q in zip(resumed.parameters(), uninterrupted):
        assert torch.equal(p, q)
    assert opt2.param_groups[0]["rho"] == RHO


def test_step_with_closure_runs_two_passes():
    model = make_model()
    x, y = make_data(10)
    calls = []

    def closure():
        calls.append(1)
        loss = mse_fn(model)((x, y))
        loss.backward()
        return loss

    ref = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
    opt.zero_grad()
    opt.step(closure)
    assert len(calls) == 2
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
    train_step(mse_fn(ref), [(x, y)], ref_opt, replay="full")
    assert rel_err(list(model.parameters()), list(ref.parameters())) < 1e-12


def test_misuse_is_reported():
    model = make_model()
    x, y = make_data(4)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    first_pass(model, x, y)
    opt.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="perturbed"):
        opt.state_dict()
    opt.second_step()
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=-1.0, lr=0.1)
    with pytest.raises(ValueError, match="eta"):
        SAM(model.parameters(), torch.optim.SGD, adaptive=True, eta=-0.01, lr=0.1)
