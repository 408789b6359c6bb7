"""experiments.passes and experiments.sweep_cost: example-passes per update written out by hand, and the wall-time
packing."""

import pytest

from experiments.config import load_config
from experiments.passes import FORWARD_SHARE, passes_per_update, run_cost
from experiments.sweep_cost import pack
from tests.conftest import REPO


@pytest.mark.parametrize(
    "replay, k, micro, shortcut, expected",
    [
        ("none", 8, 4, False, 32),  # one pass over the 32 examples
        ("full", 8, 4, False, 64),  # both passes over the window
        ("micro", 16, 2, False, 64),
        ("last", 8, 4, False, 64),  # the literal loop replays k micro-batches of 4
        ("last_only", 8, 4, False, 64),  # the literal Trainer pattern: 2 passes per micro-batch
        ("last", 8, 4, True, 32 + 4),  # the window once, then one replay of the last micro-batch
        ("last", 1, 32, True, 64),  # k = 1: nothing to skip
        ("last_only", 8, 4, True, 28 * FORWARD_SHARE + 8),  # 7 micro-batches forward only, the last one twice
        ("last_only", 2, 16, True, 16 * FORWARD_SHARE + 32),
        ("full", 8, 4, True, 64),  # the shortcut is for the bug arms only
    ],
)
def test_passes_per_update_follow_the_table(replay, k, micro, shortcut, expected):
    assert passes_per_update(replay, k, micro, shortcut) == pytest.approx(expected)


def test_run_cost_adds_the_gradient_diagnostic_and_the_evaluations():
    cfg = load_config(
        [REPO / "configs" / "default.yaml", REPO / "configs" / "arm" / "sam_last.yaml"],
        [
            "train.accumulation_steps=8",
            "train.micro_batch_size=4",
            "train.max_updates=100",
            "train.eval_every=10",
            "eval.subset_size=80",
            "data.generated.n_dev=240",
            "diagnostics.grad_fidelity=true",
            "diagnostics.grad_fidelity_every=25",
        ],
    )
    cost = run_cost(cfg)
    assert cost.train_passes == 100 * 64 + 4 * 2 * 32  # 4 diagnostics of 2 window passes each
    assert cost.eval_passes == pytest.approx((10 * 80 + 240) * FORWARD_SHARE)
    with pytest.raises(ValueError, match="max_updates"):
        run_cost(load_config([REPO / "configs" / "default.yaml"], ["train.max_updates=null"]))


def test_pack_places_each_run_on_the_first_free_slot_in_order():
    assert pack([10, 10, 10, 10], 2) == 20
    assert pack([30, 10, 10, 10], 2) == 30  # the three short runs share the second slot
    assert pack([10, 30], 1) == 40
    assert pack([], 2) == 0
