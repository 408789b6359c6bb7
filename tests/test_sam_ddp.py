"""train_step(ddp=...): every data-parallel SAM variant against single-process SAM on the global window or against its
formula written out here, with real torch.distributed (gloo, 2 processes on the CPU) and a float64 toy model.

Notation (sam/train_step.py): W ranks, global micro-batch i has n_i examples, rank r holds the slice B_{r,i} with
n_{r,i} of them (torch.tensor_split, the rule experiments.batches.rank_slice applies), N = Σ n_i, L_{r,i} the mean
loss of B_{r,i}, and L = Σ_{r,i} (n_{r,i}/N) L_{r,i} the window's mean loss.

The two ranks run every case in one spawn (a few seconds) and save what they saw; the tests here compare.
All-reduces are counted with a DDP communication hook: it runs once per gradient bucket that DDP all-reduces, and
the toy model fits in one bucket, so the count is the number of gradient all-reduces of the window.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sam import SAM, train_step
from tests.test_sam_train_step import (
    LR,
    RHO,
    MaskRecorder,
    grads_at,
    make_data,
    make_model,
    mse_fn,
    rel_err,
    sam_e,
    weighted_sum,
)

WORLD = 2


@dataclass(frozen=True)
class Case:
    name: str
    replay: str
    global_sizes: tuple  # n_i of each global micro-batch of a window
    perturbation: str = "global"
    optimizer: str = "adamw"  # adamw (compared over several windows) | sgd (one window, read g off the update)
    windows: int = 2
    equal_sizes_as_none: bool = False  # pass sizes=None (equal micro-batches) instead of the counts
    dropout: bool = False


def ks(name, replay, **kw):
    return [Case(f"{name}-k{k}", replay, (6,) * k, **kw) for k in (1, 2, 4)]


CASES = [
    *ks("full-global", "full"),  # 2 ranks x k micro-batches of 3 == 1 process x k micro-batches of 6
    *ks("none", "none"),
    *ks("last", "last"),
    *ks("last_only", "last_only"),
    # per-rank perturbations have no single-process twin: checked against their formulas (SGD, one window)
    *[
        Case(f"full-per_rank-k{k}", "full", (6,) * k, perturbation="per_rank", optimizer="sgd", windows=1)
        for k in (1, 2, 4)
    ],
    *[Case(f"micro-formula-k{k}", "micro", (6,) * k, optimizer="sgd", windows=1) for k in (1, 2, 4)],
    *[Case(f"last-formula-k{k}", "last", (6,) * k, optimizer="sgd", windows=1) for k in (2, 4)],
    *[Case(f"last_only-formula-k{k}", "last_only", (6,) * k, optimizer="sgd", windows=1) for k in (2, 4)],
    Case("last_only-formula-uneven", "last_only", (7, 6, 3), optimizer="sgd", windows=1),
    # uneven slices: 7 rows split 4/3, and a micro-batch of 1 row that leaves rank 1 with an empty slice
    *[Case(f"{replay}-uneven", replay, (7, 6, 1)) for replay in ("none", "full", "last", "last_only")],
    Case("micro-formula-uneven", "micro", (7, 6, 1), optimizer="sgd", windows=1),
    Case("full-per_rank-uneven", "full", (7, 6, 1), perturbation="per_rank", optimizer="sgd", windows=1),
    Case("full-global-sizes-none", "full", (6, 6), equal_sizes_as_none=True),
    Case("full-global-dropout", "full", (6, 6), dropout=True, windows=1),
]
BY_NAME = {c.name: c for c in CASES}


def window_data(case: Case, window: int):
    x, y = make_data(sum(case.global_sizes), seed=1 + window)
    return x, y


def global_micro_batches(case: Case, window: int):
    x, y = window_data(case, window)
    out, start = [], 0
    for n in case.global_sizes:
        out.append((x[start : start + n], y[start : start + n]))
        start += n
    return out


def rank_slices(case: Case, window: int, rank: int):
    """(batches, sizes) of `rank`: its tensor_split slice of each global micro-batch; an empty slice becomes the
    micro-batch's first row with size 0 (a placeholder with weight 0)."""
    batches, sizes = [], []
    for xb, yb in global_micro_batches(case, window):
        rows = torch.tensor_split(torch.arange(len(xb)), WORLD)[rank]
        if len(rows):
            batches.append((xb[rows], yb[rows]))
            sizes.append(len(rows))
        else:
            batches.append((xb[:1], yb[:1]))
            sizes.append(0)
    return batches, sizes


def build(case: Case):
    if case.dropout:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 16), MaskRecorder(0.5), nn.Linear(16, 3)).double()
    else:
        model = make_model()
    if case.replay == "none":
        opt = (
            torch.optim.AdamW(model.parameters(), lr=1e-2)
            if case.optimizer == "adamw"
            else torch.optim.SGD(model.parameters(), lr=LR)
        )
    else:
        opt = (
            SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-2)
            if case.optimizer == "adamw"
            else SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
        )
    return model, opt


# ---------------------------------------------------------------------------------------------------------------------
# the two ranks


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from experiments.distributed import count_allreduces

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    out = {}
    for case in CASES:
        model, opt = build(case)
        ddp = DDP(model, forward_sync_buffers=False)
        buckets = count_allreduces(ddp)
        torch.manual_seed(100 + rank)  # each rank its own dropout stream
        record = {"counts": [], "results": []}
        for window in range(case.windows):
            batches, sizes = rank_slices(case, window, rank)
            buckets.clear()
            result = train_step(
                mse_fn(ddp),
                batches,
                opt,
                replay=case.replay,
                perturbation=case.perturbation,
                sizes=None if case.equal_sizes_as_none else sizes,
                global_sizes=None if case.equal_sizes_as_none else list(case.global_sizes),
                ddp=ddp,
            )
            record["counts"].append(len(buckets))
            record["results"].append(asdict(result))
        record["params"] = [p.detach().clone() for p in model.parameters()]
        record["grads"] = [p.grad.detach().clone() for p in model.parameters()]
        if case.dropout:
            record["masks"] = [m.clone() for m in model[1].masks]
        out[case.name] = record
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    ddp = None  # before the group goes, or exit can deadlock in gloo's teardown (experiments.distributed.Dist.close)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks saw in every case: {case name: {params, grads, counts, results[, masks]}}."""
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ---------------------------------------------------------------------------------------------------------------------
# references


def single_process(case: Case):
    """Single-process train_step on the global window (k micro-batches of n_i): params and per-window results."""
    model, opt = build(case)
    results = []
    for window in range(case.windows):
        r = train_step(
            mse_fn(model), global_micro_batches(case, window), opt, replay=case.replay, sizes=list(case.global_sizes)
        )
        results.append(asdict(r))
    return [p.detach().clone() for p in model.parameters()], results


def assert_replicas_identical(ranks, name):
    for a, b in zip(ranks[0][name]["params"], ranks[1][name]["params"]):
        assert torch.equal(a, b), f"{name}: the ranks' weights differ"


def assert_results_match(ddp_results, ref_results, keys=("loss", "perturbed_loss", "grad_norm", "first_grad_norm")):
    for got, want in zip(ddp_results, ref_results):
        for key in keys:
            if want[key] is None:
                assert got[key] is None, key
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-10), key
        assert got["skipped"] == want["skipped"]


# ---------------------------------------------------------------------------------------------------------------------
# equal to single-process SAM on the global window


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES if c.optimizer == "adamw" and not c.dropout])
def test_ddp_equals_single_process_on_the_global_window(ranks, name):
    """none, full (global perturbation), last and last_only with 2 ranks x k micro-batches of m == one process with k
    micro-batches of 2m (uneven: of n_i), over 2 AdamW updates, and so are the reported numbers."""
    case = BY_NAME[name]
    assert_replicas_identical(ranks, name)
    params, results = single_process(case)
    assert rel_err(ranks[0][name]["params"], params) <= 1e-10
    for rank in range(WORLD):
        assert_results_match(ranks[rank][name]["results"], results)


# ---------------------------------------------------------------------------------------------------------------------
# against the written-out formulas (SGD, one window: the gradient used is in .grad and w' = w - lr g)


def split_rows(case: Case):
    """{(r, i): (x, y) of B_{r,i}} of window 0, empty slices left out."""
    out = {}
    for i, (xb, yb) in enumerate(global_micro_batches(case, 0)):
        for r, rows in enumerate(torch.tensor_split(torch.arange(len(xb)), WORLD)):
            if len(rows):
                out[r, i] = (xb[rows], yb[rows])
    return out


def check_sgd_update(ranks, name, expected_grad):
    model = make_model()
    expected_params = [p - LR * g for p, g in zip(model.parameters(), expected_grad)]
    for rank in range(WORLD):
        assert rel_err(ranks[rank][name]["grads"], expected_grad) <= 1e-10
    assert rel_err(ranks[0][name]["params"], expected_params) <= 1e-10
    assert_replicas_identical(ranks, name)


@pytest.mark.parametrize("name", [c.name for c in CASES if c.perturbation == "per_rank"])
def test_per_rank_perturbation_equals_its_formula(ranks, name):
    """per_rank: g = Σ_{r,i} (n_{r,i}/N) ∇L_{r,i}(w + e_r), e_r = rho ∇L^r(w)/‖∇L^r(w)‖, L^r = rank r's mean loss."""
    case = BY_NAME[name]
    model, parts, total = make_model(), split_rows(case), sum(case.global_sizes)
    expected = None
    for r in range(WORLD):
        mine = {i: b for (rr, i), b in parts.items() if rr == r}
        x_r = torch.cat([b[0] for b in mine.values()])
        y_r = torch.cat([b[1] for b in mine.values()])
        e_r = sam_e(grads_at(model, (x_r, y_r)))
        term = weighted_sum(
            [grads_at(model, b, shift=e_r) for b in mine.values()], [len(b[0]) / total for b in mine.values()]
        )
        expected = term if expected is None else [a + b for a, b in zip(expected, term)]
    check_sgd_update(ranks, name, expected)
    # and it is not the global perturbation (k = 1 included: each rank has half of the micro-batch)
    x, y = window_data(case, 0)
    global_grad = grads_at(model, (x, y), shift=sam_e(grads_at(model, (x, y))))
    assert rel_err(ranks[0][name]["grads"], global_grad) > 1e-4


@pytest.mark.parametrize("name", [c.name for c in CASES if c.name.startswith("last-formula")])
def test_last_equals_its_formula(ranks, name):
    """last under DDP (every backward all-reduces): g = Σ_r (n_{r,k}/n_k) ∇L_{r,k}(w + e) = ∇L_k(w + e), the SAM
    gradient of global micro-batch k alone, with e = rho ∇L(w)/‖∇L(w)‖ from the whole global window."""
    case = BY_NAME[name]
    model = make_model()
    x, y = window_data(case, 0)
    e = sam_e(grads_at(model, (x, y)))
    k = len(case.global_sizes)
    parts = split_rows(case)
    n_k = case.global_sizes[-1]
    expected = weighted_sum(
        [grads_at(model, parts[r, k - 1], shift=e) for r in range(WORLD)],
        [len(parts[r, k - 1][0]) / n_k for r in range(WORLD)],
    )
    check_sgd_update(ranks, name, expected)
    assert rel_err(expected, grads_at(model, global_micro_batches(case, 0)[-1], shift=e)) <= 1e-12


@pytest.mark.parametrize("name", [c.name for c in CASES if c.name.startswith("last_only-formula")])
def test_last_only_equals_its_formula(ranks, name):
    """last_only under DDP (the Trainer pattern: micro-batches 1..k−1 inside no_sync): e_k = rho ∇L_k(w)/‖∇L_k(w)‖
    from the all-reduced gradient of global micro-batch k, g = Σ_r (n_{r,k}/n_k) ∇L_{r,k}(w + e_k) = ∇L_k(w + e_k)."""
    case = BY_NAME[name]
    model = make_model()
    k, parts, n_k = len(case.global_sizes), split_rows(case), case.global_sizes[-1]
    last = global_micro_batches(case, 0)[-1]
    e_k = sam_e(grads_at(model, last))
    expected = weighted_sum(
        [grads_at(model, parts[r, k - 1], shift=e_k) for r in range(WORLD)],
        [len(parts[r, k - 1][0]) / n_k for r in range(WORLD)],
    )
    check_sgd_update(ranks, name, expected)
    assert rel_err(expected, grads_at(model, last, shift=e_k)) <= 1e-12


@pytest.mark.parametrize("name", [c.name for c in CASES if c.name.startswith("micro-formula")])
def test_micro_equals_its_formula(ranks, name):
    """micro under DDP: g = Σ_{r,i} (n_{r,i}/N) ∇L_{r,i}(w + e_{r,i}), e_{r,i} from ∇L_{r,i}(w) alone."""
    case = BY_NAME[name]
    model, parts, total = make_model(), split_rows(case), sum(case.global_sizes)
    grads = [grads_at(model, b, shift=sam_e(grads_at(model, b))) for b in parts.values()]
    check_sgd_update(ranks, name, weighted_sum(grads, [len(b[0]) / total for b in parts.values()]))
    # first_grad_norm: the ranks' mean of ‖(n_{r,k}/N) ∇L_{r,k}(w)‖ (single process: ‖(n_k/N) ∇L_k(w)‖); an empty
    # slice has no gradient: norm 0
    k = len(case.global_sizes)
    norms = [
        torch.sqrt(sum((g**2).sum() for g in grads_at(model, parts[r, k - 1]))).item() * len(parts[r, k - 1][0]) / total
        if (r, k - 1) in parts
        else 0.0
        for r in range(WORLD)
    ]
    assert ranks[0][name]["results"][0]["first_grad_norm"] == pytest.approx(sum(norms) / WORLD, rel=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# all-reduces per window, and the first forward inside no_sync


def expected_all_reduces(case: Case) -> int:
    k = len(case.global_sizes)
    if case.replay == "last":
        return 2 * k  # the copied loop wrapped in DDP: every backward of both passes synchronises
    if (case.replay == "full" and case.perturbation == "global") or case.replay == "last_only":
        return 2  # last_only: micro-batch k's two passes; the discarded ones run inside no_sync
    return 1  # none, full per_rank, micro


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_gradient_all_reduces_per_window(ranks, name):
    """none 1, full global 2, full per_rank 1, last 2k, micro 1, last_only 2. A first forward outside no_sync would make
    per_rank and micro synchronise their first pass too (2 and k+1), which is the bug of davda54/sam issue #78."""
    case = BY_NAME[name]
    for rank in range(WORLD):
        assert ranks[rank][name]["counts"] == [expected_all_reduces(case)] * case.windows


def test_dropout_masks_differ_between_ranks_and_repeat_in_the_second_pass(ranks):
    """Each rank draws its own masks; each micro-batch's second pass reuses its first pass's masks."""
    name = "full-global-dropout"
    k = len(BY_NAME[name].global_sizes)
    for rank in range(WORLD):
        masks = ranks[rank][name]["masks"]
        assert len(masks) == 2 * k
        for i in range(k):
            assert torch.equal(masks[i], masks[k + i])
    assert not torch.equal(ranks[0][name]["masks"][0], ranks[1][name]["masks"][0])
    assert_replicas_identical(ranks, name)


# ---------------------------------------------------------------------------------------------------------------------
# arguments


def test_data_parallel_arguments_are_checked():
    model = make_model()
    x, y = make_data(4)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    with pytest.raises(ValueError, match="perturbation="):
        train_step(mse_fn(model), [(x, y)], opt, replay="full", perturbation="local")
    with pytest.raises(ValueError, match="per_rank.*replay=.full. only"):
        train_step(mse_fn(model), [(x, y)], opt, replay="micro", perturbation="per_rank")
    with pytest.raises(ValueError, match="global_sizes is only"):
        train_step(mse_fn(model), [(x, y)], opt, replay="full", sizes=[4], global_sizes=[8])
    with pytest.raises(ValueError, match="positive"):
        train_step(mse_fn(model), [(x, y)], opt, replay="full", sizes=[0])
