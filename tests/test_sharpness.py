"""Loss-landscape primitives (analysis.landscape), checked against closed forms.

* a quadratic 1/2 w^T A w split over two tensors with a known spectrum: lambda_max, tr(H), H v, and the exact
  average- and worst-case adaptive sharpness (a Gaussian expectation and a trust-region maximum);
* a tiny tanh MLP with cross-entropy against its dense Hessian;
* a tiny BERT (eager attention): filter-normalised directions, bitwise restoration of weights and buffers after every
  measurement, and the reason the CLI loads checkpoints with attn_implementation="eager".
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from analysis.landscape import (
    PassCounter,
    average_adaptive_sharpness,
    filter_normalized_direction,
    hessian_lanczos,
    hessian_top_eigen,
    hessian_top_eigenvalue,
    hessian_vector_product,
    hutchinson_trace,
    interpolate,
    loss_curve_1d,
    loss_surface_2d,
    worst_case_adaptive_sharpness,
)

EIGS = [10.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1]


# ----------------------------------------------------------------------------------------------------------------------
# a quadratic with a known spectrum over two parameter tensors (6 + 4 entries)
# ----------------------------------------------------------------------------------------------------------------------
def make_quadratic(seed=0, centred=False):
    """L(w) = 1/2 (w - c)^T A (w - c), w = cat(w1, w2), A = Q diag(EIGS) Q^T; c = w (a minimum) if centred else 0."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(EIGS, dtype=torch.float64)) @ q.T
    w1 = torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_()
    w2 = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_()
    c = torch.cat([w1, w2]).detach().clone() if centred else torch.zeros(10, dtype=torch.float64)

    def loss_fn():
        x = torch.cat([w1, w2]) - c
        return 0.5 * x @ a @ x

    return loss_fn, [w1, w2], a


def trust_region_max(g, m, rho):
    """max_{||x|| <= rho} g.x + 1/2 x^T M x for PSD M: x = (mu I - M)^-1 g with mu > lambda_max(M), ||x|| = rho."""
    ev, vecs = torch.linalg.eigh(m)
    gt = vecs.T @ g
    lo, hi = ev.max().item(), ev.max().item() + g.norm().item() / rho + 1.0
    for _ in range(200):  # ||x(mu)|| decreases in mu: bisection
        mu = 0.5 * (lo + hi)
        lo, hi = (mu, hi) if (gt / (mu - ev)).norm() > rho else (lo, mu)
    x = vecs @ (gt / (hi - ev))
    return float(g @ x + 0.5 * x @ m @ x)


def test_hvp_is_the_matrix_product_across_tensors():
    loss_fn, params, a = make_quadratic()
    v = [torch.arange(6, dtype=torch.float64), -torch.ones(4, dtype=torch.float64)]
    counter = PassCounter()
    hv = hessian_vector_product(loss_fn, params, v, counter=counter)
    expected = a @ torch.cat(v)
    assert_close(torch.cat(hv), expected)
    assert counter.as_dict() == {"forward": 1, "backward": 1, "hvp": 1}
    named = hessian_vector_product(loss_fn, {"w1": params[0], "w2": params[1]}, {"w2": v[1], "w1": v[0]})
    assert_close(torch.cat(named), expected)
    with pytest.raises(KeyError):
        hessian_vector_product(loss_fn, {"w1": params[0], "w2": params[1]}, {"w1": v[0]})
    with pytest.raises(ValueError):
        hessian_vector_product(loss_fn, params, [v[0], v[0]])


def test_power_iteration_finds_lambda_max_of_the_quadratic():
    loss_fn, params, _ = make_quadratic()
    counter = PassCounter()
    res = hessian_top_eigen(loss_fn, params, counter=counter)  # defaults: iters=20, tol=1e-3
    assert res.converged
    assert res.eigenvalue == pytest.approx(max(EIGS), rel=0.01)
    assert res.eigenvalue <= max(EIGS) * (1 + 1e-12)  # a Rayleigh quotient never exceeds lambda_max
    assert counter.as_dict() == {"forward": 1, "backward": 1, "hvp": res.iterations}
    # without graph reuse every product pays its own forward and backward, for the same numbers
    fresh = PassCounter()
    assert hessian_top_eigenvalue(loss_fn, params, counter=fresh, reuse_graph=False) == pytest.approx(res.eigenvalue)
    assert fresh.as_dict() == {"forward": res.iterations, "backward": res.iterations, "hvp": res.iterations}


def test_hutchinson_trace_of_the_quadratic():
    loss_fn, params, _ = make_quadratic()
    est, se = hutchinson_trace(loss_fn, params, samples=500, seed=1)
    true = sum(EIGS)
    assert abs(est - true) < 3 * se
    assert est == pytest.approx(true, rel=0.05)
    # with Rademacher probes Var(v^T A v) = 2 sum_{i != j} A_ij^2: the standard error is estimated, not made up
    _, _, a = make_quadratic()
    sd = math.sqrt(2 * float((a**2).sum() - (torch.diagonal(a) ** 2).sum()))
    assert se == pytest.approx(sd / math.sqrt(500), rel=0.2)


@pytest.mark.parametrize(
    "normalization, centred, antithetic",
    [("ball", True, False), ("elementwise", True, False), ("ball", False, True), ("elementwise", False, True)],
)
def test_average_adaptive_sharpness_matches_the_gaussian_expectation(normalization, centred, antithetic):
    # at a minimum (or with antithetic pairs, which cancel g . delta) every sample is 1/2 delta^T A delta, delta = S u:
    #   ball:        u = rho z/||z||  ->  E = rho^2 / (2 d) tr(S A S)
    #   elementwise: u = rho z        ->  E = rho^2 / 2     tr(S A S)
    loss_fn, params, a = make_quadratic(centred=centred)
    s = torch.cat([p.detach().abs() for p in params])
    sas = torch.trace(torch.diag(s) @ a @ torch.diag(s)).item()
    rhos = [0.05, 0.3]
    res = average_adaptive_sharpness(
        loss_fn, params, rhos, samples=400, seed=3, normalization=normalization, antithetic=antithetic
    )
    for rho in rhos:
        expected = rho**2 * sas / 2 / (10 if normalization == "ball" else 1)
        r = res[rho]
        assert r.samples == 400 and len(r.increases) == 400
        assert abs(r.mean - expected) < 4 * r.standard_error
        assert r.mean == pytest.approx(expected, rel=0.15)


def test_antithetic_pairs_remove_the_first_order_noise():
    loss_fn, params, _ = make_quadratic()  # not a minimum: the gradient is large
    plain = average_adaptive_sharpness(loss_fn, params, [0.1], samples=200, seed=0, antithetic=False)[0.1]
    paired = average_adaptive_sharpness(loss_fn, params, [0.1], samples=200, seed=0, antithetic=True)[0.1]
    assert abs(plain.mean - paired.mean) < 4 * plain.standard_error  # same expectation
    assert paired.standard_error < 0.2 * plain.standard_error


@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0])
def test_worst_case_adaptive_sharpness_reaches_the_trust_region_maximum(rho):
    # L(w + S u) - L(w) = (S g) . u + 1/2 u^T (S A S) u: the exact maximum over ||u|| <= rho is a trust-region problem
    loss_fn, params, a = make_quadratic()
    w = torch.cat([p.detach() for p in params])
    s = torch.diag(w.abs())
    best = trust_region_max(s @ (a @ w), s @ a @ s, rho)
    res = worst_case_adaptive_sharpness(loss_fn, params, [rho], steps=5, seed=0)[rho]
    assert res.adaptive_norm <= rho * (1 + 1e-12)
    assert res.increase <= best * (1 + 1e-9)  # every visited point is feasible
    assert res.increase >= 0.95 * best
    assert res.steps == 5 and len(res.losses) == 6 and res.step_size == pytest.approx(2 * rho / 5)
    assert res.delta_norm <= rho * w.abs().max().item() * (1 + 1e-12)


def test_worst_case_counts_its_passes():
    loss_fn, params, _ = make_quadratic()
    counter = PassCounter()
    worst_case_adaptive_sharpness(loss_fn, params, [0.1, 0.2], steps=4, counter=counter)
    # L(w) once; per rho: 4 forward+backward, 1 forward at the last point
    assert counter.as_dict() == {"forward": 1 + 2 * 5, "backward": 2 * 4, "hvp": 0}


# ----------------------------------------------------------------------------------------------------------------------
# a tiny MLP 3 -> 5 -> 2 (tanh, cross-entropy) against its dense Hessian
# ----------------------------------------------------------------------------------------------------------------------
def make_mlp(seed=0, weight_decay=0.0, n_points=32):
    """3 -> 5 -> 2 tanh MLP, fixed points with random labels; loss = CE + weight_decay/2 * ||theta||^2."""
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(n_points, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (n_points,), generator=gen)

    def objective(out, params):
        return F.cross_entropy(out, y) + 0.5 * weight_decay * sum((p**2).sum() for p in params)

    def loss_fn():
        return objective(model(x), list(model.parameters()))

    return model, loss_fn, x, objective


@pytest.fixture(scope="module")
def trained_mlp():
    """The MLP with weight decay at a minimum found by L-BFGS (.grad cleared afterwards)."""
    model, loss_fn, x, objective = make_mlp(weight_decay=0.01)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    for p in model.parameters():
        p.grad = None
    return model, loss_fn, x, objective


def flatten(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat, like):
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].reshape(t.shape))
        i += t.numel()
    return out


def dense_hessian(model, x, objective):
    """d^2 loss / d theta^2 over the flattened parameters, by torch.autograd.functional.hessian."""
    names = [n for n, _ in model.named_parameters()]
    like = [p.detach() for p in model.parameters()]

    def f(flat):
        tensors = unflatten(flat, like)
        return objective(torch.func.functional_call(model, dict(zip(names, tensors)), (x,)), tensors)

    return torch.autograd.functional.hessian(f, flatten(like))


@pytest.mark.parametrize("n_points", [16, 32])
def test_power_iteration_matches_the_dense_hessian_of_an_mlp(n_points):
    model, loss_fn, x, objective = make_mlp(n_points=n_points)
    h = dense_hessian(model, x, objective)
    ev = torch.linalg.eigvalsh(h)
    params = list(model.parameters())
    # at a random init the Hessian is indefinite; plain power iteration converges to the eigenvalue of largest
    # magnitude: lambda_max with 32 points, the most negative one with 16 points
    dominant = ev[ev.abs().argmax()].item()
    assert (dominant > 0) == (n_points == 32)
    lam = hessian_top_eigenvalue(loss_fn, params, iters=100, tol=1e-6)
    assert lam == pytest.approx(dominant, rel=0.02)
    # shifting by it makes H - lam I semi-definite: the iteration then finds the other end of the spectrum, so a
    # negative first result followed by a shifted run gives lambda_max
    other = (ev.max() if dominant < 0 else ev.min()).item()
    res = hessian_top_eigen(loss_fn, params, iters=300, tol=1e-7, shift=lam)
    assert res.eigenvalue == pytest.approx(other, rel=0.02)
    # the HVP itself is the dense product, and Hutchinson agrees with the dense trace
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=p.dtype) for p in params]
    assert_close(flatten(hessian_vector_product(loss_fn, params, v)), h @ flatten(v))
    est, se = hutchinson_trace(loss_fn, params, samples=200, seed=0)
    assert abs(est - torch.trace(h).item()) < 4 * se


def test_power_iteration_at_a_trained_mlp_gives_lambda_max_with_default_settings(trained_mlp):
    model, loss_fn, x, objective = trained_mlp
    grads = torch.autograd.grad(loss_fn(), list(model.parameters()))
    assert flatten(grads).norm() < 1e-4  # a stationary point
    ev = torch.linalg.eigvalsh(dense_hessian(model, x, objective))
    assert ev.max() > 10 * ev.min().abs()  # near a minimum lambda_max dominates
    res = hessian_top_eigen(loss_fn, list(model.parameters()))  # iters=20, tol=1e-3
    assert res.converged
    assert res.eigenvalue == pytest.approx(ev.max().item(), rel=0.02)


def test_worst_case_is_at_least_the_average_on_the_mlp(trained_mlp):
    model, loss_fn, _, _ = trained_mlp
    params = list(model.parameters())
    rhos = [0.05, 0.1, 0.2]
    avg = average_adaptive_sharpness(loss_fn, params, rhos, samples=20, seed=0)
    worst = worst_case_adaptive_sharpness(loss_fn, params, rhos, steps=5, seed=0)
    for rho in rhos:
        assert 0 < avg[rho].mean < worst[rho].increase
        assert worst[rho].adaptive_norm <= rho * (1 + 1e-12)
    assert worst[0.05].increase < worst[0.1].increase < worst[0.2].increase
    assert avg[0.05].mean < avg[0.1].mean < avg[0.2].mean  # common random numbers: monotone here


def test_same_seed_same_numbers_other_seed_other_numbers():
    model, loss_fn, _, _ = make_mlp()
    params = list(model.parameters())

    def measure(seed):
        return {
            "lambda": hessian_top_eigen(loss_fn, params, iters=3, seed=seed).history,
            "trace": tuple(hutchinson_trace(loss_fn, params, samples=5, seed=seed)),
            "average": average_adaptive_sharpness(loss_fn, params, [0.1], samples=3, seed=seed)[0.1].increases,
            "worst": worst_case_adaptive_sharpness(loss_fn, params, [0.1], steps=2, seed=seed)[0.1].losses,
        }

    first, again, other = measure(0), measure(0), measure(1)
    assert first == again  # bitwise-equal floats
    for key in first:
        assert first[key] != other[key], key


# ----------------------------------------------------------------------------------------------------------------------
# a tiny BERT (eager attention): directions and bitwise restoration of everything
# ----------------------------------------------------------------------------------------------------------------------
def make_bert(attn="eager"):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        attn_implementation=attn,
    )
    model = BertForQuestionAnswering(cfg).eval()  # .bert is a BertModel (no pooler); the QA head is a Linear(32, 2)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, 100, (4, 16), generator=gen),
        "attention_mask": torch.ones(4, 16, dtype=torch.long),
        "start_positions": torch.tensor([1, 3, 5, 7]),
        "end_positions": torch.tensor([2, 3, 9, 8]),
    }
    batch["attention_mask"][:, 12:] = 0  # some padding, as in real QA batches

    def loss_fn():
        return model(**batch).loss

    return model, loss_fn


@pytest.fixture(scope="module")
def bert():
    return make_bert()


def snapshot(model):
    return {
        **{f"param:{n}": p.detach().clone() for n, p in model.named_parameters()},
        **{f"buffer:{n}": b.clone() for n, b in model.named_buffers()},
    }


def assert_bitwise_unchanged(model, snap):
    now = snapshot(model)
    assert now.keys() == snap.keys()
    changed = [k for k in snap if not torch.equal(now[k], snap[k])]
    assert not changed, f"changed: {changed[:5]}"
    assert all(p.grad is None for p in model.parameters())  # gradients come from autograd.grad, never .grad


def test_filter_normalized_direction_on_bert(bert):
    model, _ = bert
    named = dict(model.named_parameters())
    d = filter_normalized_direction(model, seed=0)
    assert list(d) == list(named)  # parameters only, in order
    assert not any(k.endswith(("position_ids", "token_type_ids")) for k in d)  # buffers never included
    for name, p in named.items():
        assert d[name].shape == p.shape and d[name].dtype == p.dtype
        if p.dim() < 2 or "LayerNorm" in name:
            assert torch.count_nonzero(d[name]) == 0, name
            continue
        rows, wrows = d[name].reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1)
        assert_close(rows.norm(dim=1), wrows.norm(dim=1), rtol=1e-5, atol=1e-6)
        assert_close(rows.mean(dim=1), torch.zeros(p.shape[0]), atol=1e-6, rtol=0)
    # embeddings are 2D: one filter per token / position / token type, like any weight matrix
    for emb in ("word", "position", "token_type"):
        assert torch.count_nonzero(d[f"bert.embeddings.{emb}_embeddings.weight"]) > 0
    # same seed -> same tensors (also from named_parameters() or a dict); other seed -> other tensors
    again = filter_normalized_direction(model.named_parameters(), seed=0)
    assert all(torch.equal(d[k], again[k]) for k in d)
    other = filter_normalized_direction(named, seed=1)
    assert not torch.equal(d["qa_outputs.weight"], other["qa_outputs.weight"])
    # a parameter's direction depends on (seed, name, shape) only, not on which other parameters are passed
    alone = filter_normalized_direction({"qa_outputs.weight": named["qa_outputs.weight"]}, seed=0)
    assert torch.equal(alone["qa_outputs.weight"], d["qa_outputs.weight"])
    # an exclude pattern zeroes a 2D weight too
    no_emb = filter_normalized_direction(model, seed=0, exclude=("LayerNorm", "embeddings"))
    assert torch.count_nonzero(no_emb["bert.embeddings.word_embeddings.weight"]) == 0


def _measure(name, model, loss_fn):
    params = dict(model.named_parameters())
    d1 = filter_normalized_direction(model, seed=0)
    d2 = filter_normalized_direction(model, seed=1)
    if name == "hvp":
        return hessian_vector_product(loss_fn, params, d1)
    if name == "lambda_max":
        return hessian_top_eigenvalue(loss_fn, params, iters=3)
    if name == "trace":
        return hutchinson_trace(loss_fn, params, samples=2)
    if name == "average":
        return average_adaptive_sharpness(loss_fn, params, [0.01, 0.05], samples=2)
    if name == "worst":
        return worst_case_adaptive_sharpness(loss_fn, params, [0.01, 0.05], steps=2)
    if name == "curve_1d":
        return loss_curve_1d(loss_fn, params, d1, [-0.5, 0.0, 0.5])
    if name == "surface_2d":
        return loss_surface_2d(loss_fn, params, d1, d2, [-0.5, 0.5], [-0.5, 0.0, 0.5])
    if name == "interpolate":
        theta_b = {k: p.detach() + d1[k] for k, p in params.items()}
        return interpolate(loss_fn, params, params, theta_b, [0.0, 0.5, 1.0])
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name", ["hvp", "lambda_max", "trace", "average", "worst", "curve_1d", "surface_2d", "interpolate"]
)
def test_every_measurement_leaves_the_bert_bitwise_unchanged(bert, name):
    model, loss_fn = bert
    snap = snapshot(model)
    result = _measure(name, model, loss_fn)
    assert_bitwise_unchanged(model, snap)
    assert result is not None


def test_landscape_values_on_bert(bert):
    model, loss_fn = bert
    params = dict(model.named_parameters())
    with torch.no_grad():
        base = float(loss_fn())
    d1 = filter_normalized_direction(model, seed=0)
    d2 = filter_normalized_direction(model, seed=1)
    curve = loss_curve_1d(loss_fn, params, d1, [-1.0, 0.0, 1.0])
    assert curve.shape == (3,) and curve.dtype == torch.float64
    assert curve[1].item() == base  # w + 0 * d is w exactly
    counter = PassCounter()
    surf = loss_surface_2d(loss_fn, params, d1, d2, [-1.0, 0.0, 1.0], [0.0, 1.0], counter=counter)
    assert surf.shape == (3, 2) and surf[1, 0].item() == base
    assert_close(surf[:, 0], curve)  # the beta = 0 column is the 1D curve
    assert counter.as_dict() == {"forward": 6, "backward": 0, "hvp": 0}
    # interpolation: alpha = 0 is theta_a, alpha = 1 is theta_b, both exactly
    theta_b = {k: p.detach() + d1[k] for k, p in params.items()}
    line = interpolate(loss_fn, params, params, theta_b, [0.0, 1.0])
    assert line[0].item() == base and line[1].item() == curve[2].item()


def test_params_are_restored_when_the_loss_raises(bert):
    model, loss_fn = bert
    snap = snapshot(model)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return loss_fn()

    with pytest.raises(RuntimeError, match="boom"):
        loss_curve_1d(flaky, dict(model.named_parameters()), filter_normalized_direction(model, seed=0), [1.0, 2.0])
    assert_bitwise_unchanged(model, snap)


def test_hvp_on_bert_needs_eager_attention(bert):
    model, loss_fn = bert
    assert model.config._attn_implementation == "eager"
    params = dict(model.named_parameters())
    u = filter_normalized_direction(model, seed=0)
    v = filter_normalized_direction(model, seed=1)
    hu = hessian_vector_product(loss_fn, params, u)
    hv = hessian_vector_product(loss_fn, params, v)
    assert all(torch.isfinite(t).all() for t in hu)
    # the Hessian is symmetric: v^T H u = u^T H v
    vhu = sum(float((a * b).sum()) for a, b in zip(v.values(), hu))
    uhv = sum(float((a * b).sum()) for a, b in zip(u.values(), hv))
    assert vhu == pytest.approx(uhv, rel=1e-3, abs=1e-5)
    # the fused attention kernel (SDPA, the transformers default) has no double backward
    sdpa_model, sdpa_loss = make_bert("sdpa")
    with pytest.raises(RuntimeError, match="eager"):
        hessian_vector_product(sdpa_loss, dict(sdpa_model.named_parameters()), u)


# ----------------------------------------------------------------------------------------------------------------------
# Lanczos lambda_max and the trace's standard error against dense / exact values
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_points", [16, 32])
def test_lanczos_lambda_max_matches_eigvalsh_of_the_dense_mlp_hessian(n_points):
    # 16 points: the most negative eigenvalue has the larger magnitude (power iteration would find it); Lanczos's
    # largest Ritz value is lambda_max either way
    model, loss_fn, x, objective = make_mlp(n_points=n_points)
    ev = torch.linalg.eigvalsh(dense_hessian(model, x, objective))
    counter = PassCounter()
    res = hessian_lanczos(loss_fn, list(model.parameters()), max_steps=32, tol=1e-4, seed=0, counter=counter)
    assert res.converged and res.verified and res.residual <= 1e-4
    assert abs(res.eigenvalue - ev.max().item()) <= 1e-3 * abs(ev.max().item())
    # a Ritz value never exceeds lambda_max; the smallest Ritz value is an upper bound of lambda_min
    assert res.eigenvalue <= ev.max().item() * (1 + 1e-12) and res.smallest >= ev.min().item() - 1e-12
    # Bauer-Fike: an eigenvalue lies within ||H y - theta y|| = residual |theta| of theta
    assert (ev - res.eigenvalue).abs().min().item() <= res.residual * abs(res.eigenvalue) * (1 + 1e-9)
    assert res.hvp == res.steps + 1 and counter.as_dict() == {"forward": 1, "backward": 1, "hvp": res.hvp}
    assert len(res.history) == len(res.residual_history) == res.steps
    # stopped at the first step whose estimated residual met the tolerance
    assert res.residual_history[-1] <= 1e-4 and all(r > 1e-4 for r in res.residual_history[:-1])


def test_lanczos_matches_scipy_eigsh_and_the_quadratic_spectrum():
    from scipy.sparse.linalg import LinearOperator, eigsh

    loss_fn, params, a = make_quadratic()
    res = hessian_lanczos(loss_fn, params, max_steps=10, tol=1e-8)
    # a 10-dimensional quadratic: the Krylov space is all of R^10 after at most 10 steps, so theta is exact
    assert res.converged and res.eigenvalue == pytest.approx(max(EIGS), rel=1e-10)
    op = LinearOperator((10, 10), matvec=lambda v: a.numpy() @ v, dtype=float)
    assert res.eigenvalue == pytest.approx(float(eigsh(op, k=1, which="LA")[0][0]), rel=1e-10)


def test_lanczos_with_a_budget_of_two_products_is_not_converged():
    model, loss_fn, x, objective = make_mlp(n_points=32)
    ev = torch.linalg.eigvalsh(dense_hessian(model, x, objective))
    res = hessian_lanczos(loss_fn, list(model.parameters()), max_steps=2, tol=1e-3, seed=0)
    assert res.steps == 2 and res.hvp == 3  # 2 Lanczos steps + the verifying product
    assert not res.converged and res.residual > 1e-3
    assert res.eigenvalue < ev.max().item()  # a Ritz value from below, not yet lambda_max
    # the verified residual is the true one: ||H y - theta y|| / |theta| from the dense Hessian
    y = flatten(hessian_lanczos(loss_fn, list(model.parameters()), max_steps=2, seed=0, return_vector=True).eigenvector)
    h = dense_hessian(model, x, objective)
    true = ((h @ y - res.eigenvalue * y).norm() / abs(res.eigenvalue)).item()
    assert res.residual == pytest.approx(true, rel=1e-6)


def test_lanczos_bad_arguments():
    loss_fn, params, _ = make_quadratic()
    with pytest.raises(ValueError, match="max_steps"):
        hessian_lanczos(loss_fn, params, max_steps=0)
    with pytest.raises(ValueError, match="tol"):
        hessian_lanczos(loss_fn, params, tol=0.0)


def test_hutchinson_standard_error_is_the_sample_std_over_root_n_and_covers_the_exact_trace():
    loss_fn, params, a = make_quadratic()
    exact = float(torch.trace(a))
    n = 30
    z = []
    for seed in range(40):
        res = hutchinson_trace(loss_fn, params, samples=n, seed=seed)
        values = torch.tensor(res.values, dtype=torch.float64)
        assert res.samples == n
        # SE = sample standard deviation (ddof = 1) of the n terms v_i^T H v_i, divided by sqrt(n)
        mean = values.sum() / n
        sd = torch.sqrt(((values - mean) ** 2).sum() / (n - 1))
        assert_close(
            torch.tensor([res.estimate, res.standard_error], dtype=torch.float64),
            torch.stack([mean, sd / math.sqrt(n)]),
        )
        z.append((res.estimate - exact) / res.standard_error)
    z = torch.tensor(z)
    # unbiased with a calibrated SE: every estimate within 4 SE of the exact trace, and (est - exact)/SE has a
    # second moment near 1 (for 40 independent standard normal z, mean(z^2) lies in [0.5, 1.7] with probability ~0.99)
    assert z.abs().max() < 4
    assert 0.5 < float((z**2).mean()) < 1.7


def test_deflated_hutchinson_is_unbiased_with_a_smaller_standard_error_on_the_mlp():
    model, loss_fn, x, objective = make_mlp(n_points=32)
    params = list(model.parameters())
    exact = torch.trace(dense_hessian(model, x, objective)).item()
    lanczos = hessian_lanczos(loss_fn, params, max_steps=6, tol=1e-12, return_basis=True)
    q = lanczos.basis
    assert_close(q @ q.T, torch.eye(q.shape[0], dtype=q.dtype))  # orthonormal rows
    z_plain, z_deflated, ratio = [], [], []
    for seed in range(10):
        plain = hutchinson_trace(loss_fn, params, samples=20, seed=seed)
        deflated = hutchinson_trace(loss_fn, params, samples=20, seed=seed, deflation=lanczos)
        # estimate = tr(T) + mean of u^T H u over the deflated probes; SE = their sample std / sqrt(n)
        values = torch.tensor(deflated.values, dtype=torch.float64)
        assert deflated.estimate == pytest.approx(lanczos.basis_trace + values.mean().item(), rel=1e-12)
        assert deflated.standard_error == pytest.approx(values.std(correction=1).item() / math.sqrt(20), rel=1e-12)
        z_plain.append(abs(plain.estimate - exact) / plain.standard_error)
        z_deflated.append(abs(deflated.estimate - exact) / deflated.standard_error)
        ratio.append(deflated.standard_error / plain.standard_error)
    assert max(z_plain) < 4 and max(z_deflated) < 4
    assert sum(ratio) / len(ratio) < 0.8  # the top directions no longer add variance
    with pytest.raises(ValueError, match="return_basis"):
        hutchinson_trace(loss_fn, params, deflation=hessian_lanczos(loss_fn, params, max_steps=2))
