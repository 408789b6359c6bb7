"""The CUDA-only parts of sam/: CUDA dropout RNG reuse, fp16 GradScaler on CUDA, bf16 autocast and bf16 parameters.

Skipped without a GPU (CI has none); marked `gpu`: on a GPU machine `make test-gpu` runs them.
"""

import pytest
import torch
from torch import nn

from sam import SAM, train_step
from tests.test_sam_train_step import InjectInf, MaskRecorder, make_data, make_model, mse_fn, rel_err, split

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def on_cuda(model, x, y):
    return model.to(CUDA), x.to(CUDA), y.to(CUDA)


def test_full_equals_sam_on_concatenated_batch_on_cuda():
    model, x, y = on_cuda(make_model(dtype=torch.float64), *make_data(12))
    ref = make_model(dtype=torch.float64).to(CUDA)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    ref_opt = SAM(ref.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def closure():
        loss = mse_fn(ref)((x, y))
        loss.backward()
        return loss

    ref_opt.zero_grad()
    ref_opt.step(closure)
    train_step(mse_fn(model), split(x, y, [3, 4, 5]), opt, replay="full", sizes=[3, 4, 5])
    assert rel_err(list(model.parameters()), list(ref.parameters())) < 1e-10


@pytest.mark.parametrize("reuse", [True, False])
def test_cuda_dropout_masks_reused_between_passes(reuse):
    torch.manual_seed(0)
    recorder = MaskRecorder()
    model = nn.Sequential(nn.Linear(5, 16), recorder, nn.Linear(16, 3)).double().to(CUDA)
    x, y = make_data(12)
    window = split(x.to(CUDA), y.to(CUDA), [4, 4, 4])
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    train_step(mse_fn(model), window, opt, replay="full", reuse_dropout_rng=reuse)
    masks = recorder.masks
    assert all(m.is_cuda for m in masks)
    for i in range(3):
        assert torch.equal(masks[i], masks[3 + i]) == reuse


@pytest.mark.parametrize("at_call", [0, 2])
def test_fp16_grad_scaler_on_cuda_skips_overflowing_update(at_call):
    model, x, y = on_cuda(make_model(dtype=torch.float32), *make_data(8, dtype=torch.float32))
    before = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    with torch.autocast("cuda", dtype=torch.float16):
        r = train_step(InjectInf(model, at_call), split(x, y, [4, 4]), opt, replay="full", scaler=scaler)
    assert r.skipped and scaler.get_scale() == 2.0**9
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    with torch.autocast("cuda", dtype=torch.float16):
        r2 = train_step(mse_fn(model), split(x, y, [4, 4]), opt, replay="full", scaler=scaler)
    assert not r2.skipped


@pytest.mark.parametrize("replay", ["full", "last", "micro"])
def test_bf16_autocast_on_cuda_matches_fp32(replay):
    x, y = make_data(16, dtype=torch.float32)
    out = []
    for amp in (False, True):
        model = make_model(dtype=torch.float32).to(CUDA)
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            r = train_step(mse_fn(model), split(x.to(CUDA), y.to(CUDA), [8, 8]), opt, replay=replay)
        assert not r.skipped
        out.append([p.detach().clone() for p in model.parameters()])
    assert rel_err(out[1], out[0]) < 2e-2


def test_bf16_parameters_restored_bitwise_on_cuda():
    model, x, y = on_cuda(make_model(dtype=torch.bfloat16), *make_data(8, dtype=torch.bfloat16))
    w = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0)
    train_step(mse_fn(model), split(x, y, [4, 4]), opt, replay="full")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w))
