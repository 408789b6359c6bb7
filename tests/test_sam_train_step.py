"""train_step: every replay mode against the formula it claims, written out here with torch.autograd.grad.

Notation (as in sam/train_step.py): window of k micro-batches, a_i = n_i / N, L = Σ a_i L_i.
"""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sam import SAM, train_step

RHO = 0.05
LR = 0.1


def make_model(seed=0, dtype=torch.float64, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(8, 3))
    return nn.Sequential(*layers).to(dtype)


def make_data(n, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def split(x, y, sizes):
    out, start = [], 0
    for n in sizes:
        out.append((x[start : start + n], y[start : start + n]))
        start += n
    return out


def mse_fn(model):
    return lambda batch: ((model(batch[0]) - batch[1]) ** 2).mean()


def grads_at(model, batch, shift=None):
    """∇ of the mean loss of `batch` at w (+ shift), without touching .grad; shift is a list like the params."""
    params = list(model.parameters())
    if shift is not None:
        with torch.no_grad():
            for p, s in zip(params, shift):
                p.add_(s)
    loss = mse_fn(model)(batch)
    g = torch.autograd.grad(loss, params)
    if shift is not None:
        with torch.no_grad():
            for p, s in zip(params, shift):
                p.sub_(s)
    return list(g)


def sam_e(g, rho=RHO):
    """e = rho · g / ‖g‖ with ‖g‖ the global norm."""
    norm = torch.sqrt(sum((t**2).sum() for t in g))
    return [rho * t / (norm + 1e-12) for t in g]


def weighted_sum(grad_lists, weights):
    return [sum(w * g[j] for g, w in zip(grad_lists, weights)) for j in range(len(grad_lists[0]))]


def rel_err(a, b):
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y**2).sum() for y in b))
    return (num / den).item()


SIZE_CASES = [[3], [3, 3], [3, 3, 3, 3], [2, 5], [1, 4, 2, 3]]


@pytest.mark.parametrize("sizes", SIZE_CASES, ids=lambda s: "sizes=" + "-".join(map(str, s)))
def test_full_equals_sam_on_concatenated_batch(sizes):
    """full: g = ∇L(w + e) with L the mean over the whole window and e from ∇L(w)."""
    x, y = make_data(sum(sizes))
    model = make_model()
    ref = copy.deepcopy(model)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
    for window in range(3):
        x_w, y_w = x + window, y  # a different window each update

        # reference: SAM.step on the concatenated batch, loss = mean over all N examples
        def closure(x_w=x_w, y_w=y_w):
            loss = mse_fn(ref)((x_w, y_w))
            loss.backward()
            return loss

        ref_opt.zero_grad()
        g_w = grads_at(ref, (x_w, y_w))
        expected_grad = grads_at(ref, (x_w, y_w), shift=sam_e(g_w))
        ref_opt.step(closure)
        train_step(
            mse_fn(model), split(x_w, y_w, sizes), opt, replay="full", sizes=sizes if len(set(sizes)) > 1 else None
        )
        assert rel_err([p.grad for p in model.parameters()], expected_grad) < 1e-10
        assert rel_err(list(model.parameters()), list(ref.parameters())) < 1e-10


def literal_copied_loop(model, opt, windows, k):
    """The loop this project studies, transcribed: accumulate, first_step, replay the LAST batch k times."""
    loss_fn = mse_fn(model)
    for window in windows:
        for batch in window:
            (loss_fn(batch) / k).backward()
        # (the original also calls clip_grad_norm_ here; it cannot change e, see test_clipping_before_first_step_*,
        # but it rescales g by a rounded factor, so it is left out of this bitwise comparison)
        opt.first_step(zero_grad=True)
        last = window[-1]
        for _ in range(k):
            (loss_fn(last) / k).backward()
        opt.second_step(zero_grad=True)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_last_is_the_copied_loop_bitwise(k):
    x, y = make_data(4 * k * 3)
    windows = [split(x[w * 4 * k : (w + 1) * 4 * k], y[w * 4 * k : (w + 1) * 4 * k], [4] * k) for w in range(3)]
    model, ref = make_model(), make_model()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    ref_opt = SAM(ref.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    literal_copied_loop(ref, ref_opt, windows, k)
    for window in windows:
        train_step(mse_fn(model), window, opt, replay="last")
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("k", [1, 4])
def test_last_differs_from_full_exactly_when_k_above_one(k):
    x, y = make_data(4 * k)
    window = split(x, y, [4] * k)
    results = {}
    for replay in ("full", "last"):
        model = make_model()
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
        train_step(mse_fn(model), window, opt, replay=replay)
        results[replay] = [p.detach().clone() for p in model.parameters()]
    if k == 1:
        assert_close(results["full"], results["last"], rtol=0, atol=1e-15)
    else:
        assert rel_err(results["full"], results["last"]) > 1e-4
        # and `last` used exactly ∇L_k(w + e), e from the whole window
        model = make_model()
        g_window = grads_at(model, (x, y))
        g_last = grads_at(model, window[-1], shift=sam_e(g_window))
        expected = [p - LR * g for p, g in zip(model.parameters(), g_last)]
        assert rel_err(results["last"], expected) < 1e-10


def literal_trainer_pattern(model, opt, windows):
    """The public SAMTrainer pattern, transcribed: every micro-batch's `training_step` zeroes the gradients, runs the
    first pass, perturbs, runs the second pass and restores; the Trainer steps once per window with what is left."""
    loss_fn = mse_fn(model)
    for window in windows:
        for batch in window:
            opt.zero_grad()
            loss_fn(batch).backward()
            opt.first_step(zero_grad=True)
            loss_fn(batch).backward()
            opt.restore()
        opt.base_optimizer.step()
        opt.mark_stepped()
        opt.zero_grad()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_last_only_is_the_trainer_pattern_bitwise(k):
    x, y = make_data(4 * k * 3)
    windows = [split(x[w * 4 * k : (w + 1) * 4 * k], y[w * 4 * k : (w + 1) * 4 * k], [4] * k) for w in range(3)]
    model, ref = make_model(), make_model()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    ref_opt = SAM(ref.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    literal_trainer_pattern(ref, ref_opt, windows)
    for window in windows:
        train_step(mse_fn(model), window, opt, replay="last_only")
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("sizes", [[3], [3, 3], [2, 5, 1], [1, 4, 2, 3]])
def test_last_only_is_sam_on_the_last_micro_batch_alone(sizes):
    """last_only: e_k = rho ∇L_k(w)/‖∇L_k(w)‖, g = ∇L_k(w + e_k); SGD, so w' = w − lr·g. At k = 1 that is full."""
    x, y = make_data(sum(sizes))
    window = split(x, y, sizes)
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    ref = make_model()
    last = window[-1]
    g_k = grads_at(ref, last, shift=sam_e(grads_at(ref, last)))
    expected = [p - LR * g for p, g in zip(ref.parameters(), g_k)]
    r = train_step(mse_fn(model), window, opt, replay="last_only", sizes=sizes if len(set(sizes)) > 1 else None)
    assert rel_err(list(model.parameters()), expected) < 1e-12
    # reported: the window's first-pass mean, L_k(w + e_k) and ‖∇L_k(w)‖
    with torch.no_grad():
        first = sum(n * mse_fn(ref)(b).item() for n, b in zip(sizes, window)) / sum(sizes)
    assert r.loss == pytest.approx(first, rel=1e-12)
    shifted, e_k = copy.deepcopy(ref), sam_e(grads_at(ref, last))
    with torch.no_grad():
        for p, e in zip(shifted.parameters(), e_k):
            p.add_(e)
        assert r.perturbed_loss == pytest.approx(mse_fn(shifted)(last).item(), rel=1e-12)
    norm = torch.sqrt(sum((g**2).sum() for g in grads_at(ref, last))).item()
    assert r.first_grad_norm == pytest.approx(norm, rel=1e-12)
    if len(sizes) > 1:  # and it is neither full nor last
        for replay in ("full", "last"):
            other = make_model()
            train_step(mse_fn(other), window, SAM(other.parameters(), torch.optim.SGD, rho=RHO, lr=LR), replay=replay)
            assert rel_err(list(model.parameters()), list(other.parameters())) > 1e-4


@pytest.mark.parametrize("sizes", [[3, 3, 3], [2, 5, 1]])
def test_none_equals_base_optimizer_on_concatenated_batch(sizes):
    x, y = make_data(sum(sizes))
    model, ref = make_model(), make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for _ in range(3):
        ref_opt.zero_grad()
        mse_fn(ref)((x, y)).backward()
        ref_opt.step()
        train_step(mse_fn(model), split(x, y, sizes), opt, replay="none", sizes=sizes)
    assert rel_err(list(model.parameters()), list(ref.parameters())) < 1e-12


@pytest.mark.parametrize("sizes", [[3, 3, 3], [2, 5, 1]])
def test_micro_equals_its_formula(sizes):
    """micro: g = Σ a_i ∇L_i(w + e_i), e_i = rho ∇L_i(w) / ‖∇L_i(w)‖."""
    x, y = make_data(sum(sizes))
    window = split(x, y, sizes)
    model = make_model()
    a = [n / sum(sizes) for n in sizes]
    per_batch = [grads_at(model, b, shift=sam_e(grads_at(model, b))) for b in window]
    expected_grad = weighted_sum(per_batch, a)
    expected_params = [p - LR * g for p, g in zip(model.parameters(), expected_grad)]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    result = train_step(mse_fn(model), window, opt, replay="micro", sizes=sizes)
    assert rel_err([p.grad for p in model.parameters()], expected_grad) < 1e-10
    assert rel_err(list(model.parameters()), expected_params) < 1e-10
    # the reported losses: first pass at w and second pass at w + e_i, both weighted by a_i
    model0 = make_model()
    first = sum(ai * mse_fn(model0)(b).item() for ai, b in zip(a, window))
    assert result.loss == pytest.approx(first, rel=1e-12)


@pytest.mark.parametrize("replay", ["full", "micro"])
def test_rho_zero_reduces_to_none(replay):
    x, y = make_data(12)
    window = split(x, y, [3, 4, 5])
    model, ref = make_model(), make_model()
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.0, lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for _ in range(2):
        train_step(mse_fn(model), window, opt, replay=replay, sizes=[3, 4, 5])
        train_step(mse_fn(ref), window, ref_opt, replay="none", sizes=[3, 4, 5])
    assert rel_err(list(model.parameters()), list(ref.parameters())) < 1e-12


def test_reported_numbers_follow_their_definitions():
    x, y = make_data(8)
    window = split(x, y, [4, 4])
    model = make_model()
    g = grads_at(model, (x, y))
    e = sam_e(g)
    g2 = grads_at(model, (x, y), shift=e)
    with torch.no_grad():
        loss_w = mse_fn(model)((x, y)).item()
        for p, s in zip(model.parameters(), e):
            p.add_(s)
        loss_we = mse_fn(model)((x, y)).item()
        for p, s in zip(model.parameters(), e):
            p.sub_(s)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    r = train_step(mse_fn(model), window, opt, replay="full", max_grad_norm=1e-3)
    assert r.loss == pytest.approx(loss_w, rel=1e-12)
    assert r.perturbed_loss == pytest.approx(loss_we, rel=1e-12)
    assert r.first_grad_norm == pytest.approx(torch.sqrt(sum((t**2).sum() for t in g)).item(), rel=1e-12)
    # grad_norm is the second-pass norm BEFORE clipping
    assert r.grad_norm == pytest.approx(torch.sqrt(sum((t**2).sum() for t in g2)).item(), rel=1e-12)
    assert not r.skipped


def test_max_grad_norm_clips_the_second_pass_gradient():
    """The base optimizer must step with clip(∇L(w + e)) = ∇L(w+e) · min(1, c / ‖∇L(w+e)‖)."""
    x, y = make_data(8)
    window = split(x, y, [4, 4])
    model = make_model()
    g2 = grads_at(model, (x, y), shift=sam_e(grads_at(model, (x, y))))
    norm2 = torch.sqrt(sum((t**2).sum() for t in g2))
    max_norm = 0.5 * norm2.item()
    clipped = [t * max_norm / (norm2 + 1e-6) for t in g2]
    expected = [p - LR * c for p, c in zip(model.parameters(), clipped)]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    train_step(mse_fn(model), window, opt, replay="full", max_grad_norm=max_norm)
    assert rel_err(list(model.parameters()), expected) < 1e-10


def test_train_step_rejects_bad_arguments():
    model = make_model()
    x, y = make_data(4)
    plain = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(TypeError, match="needs a sam.SAM"):
        train_step(mse_fn(model), [(x, y)], plain, replay="full")
    with pytest.raises(ValueError, match="replay="):
        train_step(mse_fn(model), [(x, y)], plain, replay="both")
    with pytest.raises(ValueError, match="at least one"):
        train_step(mse_fn(model), [], plain, replay="none")
    with pytest.raises(ValueError, match="sizes"):
        train_step(mse_fn(model), [(x, y)], plain, replay="none", sizes=[1, 2])


# --------------------------------------------------------------------------------------------------------------
# dropout masks


class MaskRecorder(nn.Module):
    """Dropout that records every mask it draws."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p, self.masks = p, []

    def forward(self, x):
        mask = (torch.rand_like(x) > self.p).to(x.dtype)
        self.masks.append(mask)
        return x * mask / (1 - self.p)


@pytest.mark.parametrize("replay,k", [("full", 3), ("micro", 3), ("last", 3), ("last_only", 3)])
@pytest.mark.parametrize("reuse", [True, False])
def test_dropout_masks_reused_between_passes(replay, k, reuse):
    torch.manual_seed(0)
    recorder = MaskRecorder()
    model = nn.Sequential(nn.Linear(5, 16), recorder, nn.Linear(16, 3)).double()
    x, y = make_data(4 * k)
    window = split(x, y, [4] * k)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    train_step(mse_fn(model), window, opt, replay=replay, reuse_dropout_rng=reuse)
    masks = recorder.masks
    if replay in ("micro", "last_only"):  # first_i, second_i interleaved
        pairs = [(masks[2 * i], [masks[2 * i + 1]]) for i in range(k)]
    elif replay == "full":
        pairs = [(masks[i], [masks[k + i]]) for i in range(k)]
    else:  # last: the last micro-batch's first-pass mask vs each of its k replays
        pairs = [(masks[k - 1], masks[k:])]
    for first, seconds in pairs:
        for second in seconds:
            assert torch.equal(first, second) == reuse


def test_reuse_leaves_rng_where_first_passes_alone_would():
    """Replaying states keeps the random stream of the rest of training independent of the second pass."""
    torch.manual_seed(0)
    model = make_model(dropout=0.3)
    x, y = make_data(8)
    window = split(x, y, [4, 4])
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    torch.manual_seed(123)
    train_step(mse_fn(model), window, opt, replay="full")
    after_sam = torch.rand(3)
    torch.manual_seed(123)
    for b in window:
        mse_fn(model)(b)
    after_first_passes = torch.rand(3)
    assert torch.equal(after_sam, after_first_passes)


# --------------------------------------------------------------------------------------------------------------
# AMP


class InjectInf:
    """loss_fn wrapper that returns inf on the n-th call (0-based)."""

    def __init__(self, model, at_call):
        self.fn, self.at, self.calls = mse_fn(model), at_call, 0

    def __call__(self, batch):
        loss = self.fn(batch)
        if self.calls == self.at:
            loss = loss * float("inf")
        self.calls += 1
        return loss


@pytest.mark.parametrize(
    "replay,at_call",
    [
        ("full", 0),
        ("full", 1),
        ("full", 2),
        ("full", 3),
        ("last", 3),
        ("micro", 0),
        ("micro", 3),
        ("none", 1),
        ("last_only", 2),  # micro-batch k's first pass (calls: B_1 first, B_1 second, B_2 first, B_2 second)
        ("last_only", 3),
    ],
)
def test_grad_scaler_overflow_skips_whole_update(replay, at_call):
    """k = 2: calls 0,1 are the first pass (micro, last_only: 0,2), 2,3 the second pass (micro, last_only: 1,3).
    last_only's micro-batch 1 (calls 0, 1) is zeroed away, so an overflow there skips nothing: not in this list."""
    model = make_model(dtype=torch.float32)
    x, y = make_data(8, dtype=torch.float32)
    window = split(x, y, [4, 4])
    before = [p.detach().clone() for p in model.parameters()]
    opt = (
        torch.optim.AdamW(model.parameters(), lr=1e-2)
        if replay == "none"
        else SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    r = train_step(InjectInf(model, at_call), window, opt, replay=replay, scaler=scaler)
    assert r.skipped
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert scaler.get_scale() == 2.0**9  # backed off by the default factor 0.5
    # the next, clean window updates normally with the smaller scale
    r2 = train_step(mse_fn(model), window, opt, replay=replay, scaler=scaler)
    assert not r2.skipped
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("replay", ["none", "full", "last", "micro", "last_only"])
def test_grad_scaler_update_equals_unscaled_update(replay):
    """With no overflow the scale must cancel exactly: same parameters as without a scaler (powers of 2)."""
    x, y = make_data(8, dtype=torch.float32)
    window = split(x, y, [4, 4])
    out = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**8)):
        model = make_model(dtype=torch.float32)
        opt = (
            torch.optim.SGD(model.parameters(), lr=LR)
            if replay == "none"
            else SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
        )
        train_step(mse_fn(model), window, opt, replay=replay, scaler=scaler, max_grad_norm=0.5)
        out.append([p.detach().clone() for p in model.parameters()])
    assert_close(out[0], out[1], rtol=1e-6, atol=1e-7)


def test_no_scaler_nonfinite_gradient_skips_step():
    model = make_model(dtype=torch.float32)
    x, y = make_data(8, dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    r = train_step(InjectInf(model, 2), split(x, y, [4, 4]), opt, replay="full")
    assert r.skipped and not opt.is_perturbed
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("replay", ["full", "last", "micro"])
def test_bf16_autocast_on_cpu_matches_fp32(replay):
    """Under torch.autocast(bf16) the update is the fp32 update up to bf16 rounding; weights stay fp32."""
    x, y = make_data(16, dtype=torch.float32)
    window = split(x, y, [8, 8])
    results = []
    for amp in (False, True):
        model = make_model(dtype=torch.float32)
        opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            r = train_step(mse_fn(model), window, opt, replay=replay)
        assert not r.skipped and not opt.is_perturbed
        results.append([p.detach().clone() for p in model.parameters()])
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert rel_err(results[1], results[0]) < 2e-2


def test_scheduler_steps_once_per_update_without_warning():
    model = make_model()
    x, y = make_data(8)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 1.0 / (1 + u))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Detected call of lr_scheduler.step() before optimizer.step()" would raise
        for update in range(4):
            assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(1.0 / (1 + update))
            train_step(mse_fn(model), split(x, y, [4, 4]), opt, replay="full")
            sched.step()
    assert sched.last_epoch == 4


# ----------------------------------------------------------------------------------------------------------------------
# shortcut=True: the bug modes without their wasted passes, against the literal loop


def _bert_qa_windows(k, windows=2, micro=2, seq=6, seed=3):
    """Windows of k micro-batches for a BertForQuestionAnswering (vocab 40, seq 6)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(windows):
        window = []
        for _ in range(k):
            window.append(
                {
                    "input_ids": torch.randint(0, 40, (micro, seq), generator=g),
                    "start_positions": torch.randint(0, seq, (micro,), generator=g),
                    "end_positions": torch.randint(0, seq, (micro,), generator=g),
                }
            )
        out.append(window)
    return out


def _bert_qa(seed=0, dropout=0.1, attn="sdpa"):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=6,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation=attn,
    )
    model = BertForQuestionAnswering(config)
    model.train()
    return model


def _run(replay, shortcut, k, attn="sdpa"):
    """Two windows of a dropout-0.1 BERT QA model from the same seed and RNG stream; the weights and results."""
    model = _bert_qa(attn=attn)
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
    torch.manual_seed(7)  # the dropout stream
    results = [
        train_step(lambda b: model(**b).loss, window, opt, replay=replay, shortcut=shortcut)
        for window in _bert_qa_windows(k)
    ]
    return [p.detach().clone() for p in model.parameters()], results, torch.get_rng_state()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("k", [1, 3])
def test_shortcut_last_only_is_the_literal_loop_bitwise(k, attn):
    """Skipping the k − 1 discarded SAM steps (their forwards still draw the dropout masks) changes no bit: weights,
    reported numbers and the RNG state after two windows, dropout 0.1 in attention and hidden layers."""
    literal, literal_results, literal_rng = _run("last_only", False, k, attn)
    short, short_results, short_rng = _run("last_only", True, k, attn)
    for p, q in zip(short, literal):
        assert torch.equal(p, q)
    assert short_results == literal_results
    assert torch.equal(short_rng, literal_rng)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_shortcut_last_equals_the_k_replays_to_rounding(k):
    """One backward with weight k·(1/k) against k replays of (1/k): the same gradient to float rounding (float64
    model: relative error < 1e-12), bitwise the same RNG state, and the same reported numbers to rounding."""
    x, y = make_data(4 * k * 3)
    windows = [split(x[w * 4 * k : (w + 1) * 4 * k], y[w * 4 * k : (w + 1) * 4 * k], [4] * k) for w in range(3)]
    weights, reports = {}, {}
    for shortcut in (False, True):
        model = make_model(dropout=0.3)
        opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
        torch.manual_seed(11)
        reports[shortcut] = [train_step(mse_fn(model), w, opt, replay="last", shortcut=shortcut) for w in windows]
        weights[shortcut] = ([p.detach().clone() for p in model.parameters()], torch.get_rng_state())
    assert rel_err(weights[True][0], weights[False][0]) < 1e-12
    assert torch.equal(weights[True][1], weights[False][1])
    for a, b in zip(reports[True], reports[False]):
        assert a.loss == b.loss and a.first_grad_norm == b.first_grad_norm
        assert a.perturbed_loss == pytest.approx(b.perturbed_loss, rel=1e-12)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-12)
    # and at k > 1 it is still the bug: the shortcut is not full replay
    if k > 1:
        model = make_model(dropout=0.3)
        opt = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
        torch.manual_seed(11)
        for w in windows:
            train_step(mse_fn(model), w, opt, replay="full")
        assert rel_err(list(model.parameters()), weights[True][0]) > 1e-4


def test_shortcut_leaves_the_other_modes_literal():
    """full, micro and none have no wasted pass: shortcut=True runs them unchanged (bitwise)."""
    for replay in ("none", "full", "micro"):
        pairs = list(zip(_run(replay, True, 2)[0], _run(replay, False, 2)[0]))
        assert pairs and all(torch.equal(p, q) for p, q in pairs)


def test_shortcut_last_needs_reused_dropout_masks():
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    x, y = make_data(8)
    with pytest.raises(ValueError, match="reuse_dropout_rng=True"):
        train_step(mse_fn(model), split(x, y, [4, 4]), opt, replay="last", shortcut=True, reuse_dropout_rng=False)
