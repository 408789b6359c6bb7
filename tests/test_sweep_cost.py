"""experiments.passes and experiments.sweep_cost: example-passes per update written out by hand, and the wall-time
packing."""

import json

import pytest

from experiments.config import load_config
from experiments.passes import FORWARD_SHARE, compute_floor, literal_passes, passes_per_update, run_cost
from experiments.sweep_cost import pack
from tests.conftest import REPO, TINY_NON_EMBEDDING_PARAMS


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


def _tiny_cfg(arm: str, *overrides: str):
    return load_config(
        [REPO / "configs" / "smoke.yaml", REPO / "configs" / "arm" / f"{arm}.yaml"],
        ["train.max_updates=10", *overrides],
    )


def test_literal_passes_ignore_the_shortcut_the_diagnostics_and_the_evaluations():
    last = _tiny_cfg("sam_last", "optim.replay_shortcut=true", "diagnostics.grad_fidelity=true")
    assert literal_passes(last) == 10 * 2 * (2 * 4)  # smoke: k = 2 × micro-batch 4, both passes, as the loop runs
    assert literal_passes(_tiny_cfg("adamw")) == 10 * 8


def test_compute_floor_is_the_literal_flop_over_the_slots_at_the_given_peak():
    # PaLM App. B per feature of t = 64 tokens: 6 · N · t + 12 · L · d · t²
    per_example = 6 * TINY_NON_EMBEDDING_PARAMS * 64 + 12 * 2 * 32 * 64**2
    cfgs = [_tiny_cfg("sam_full"), _tiny_cfg("adamw"), _tiny_cfg("sam_last")]
    passes = 160 + 80 + 160
    floor = compute_floor(cfgs, jobs=2, peak_gflops=50.0)
    assert floor["literal_example_passes"] == passes
    assert floor["flop"] == pytest.approx(passes * per_example)
    assert floor["floor_s"] == pytest.approx(passes * per_example / 2 / 50e9)
    # one long run cannot be split over two slots: the floor is at least that run alone
    lone = compute_floor([_tiny_cfg("sam_full", "train.max_updates=1000"), _tiny_cfg("adamw")], 2, 50.0)
    assert lone["floor_s"] == pytest.approx(1000 * 16 * per_example / 50e9)
    assert compute_floor([_tiny_cfg("adamw", "train.max_updates=null")], 2, 50.0) is None
    # the updates a run made count, not its cap (the epochs can end it first)
    made = compute_floor([_tiny_cfg("sam_full", "train.max_updates=1000")], 2, 50.0, updates=[5])
    assert made["literal_example_passes"] == 5 * 16
    assert compute_floor([_tiny_cfg("adamw", "train.max_updates=null")], 2, 50.0, updates=[7])["flop"] == pytest.approx(
        7 * 8 * per_example
    )


def test_the_report_setup_states_the_floor_that_sweep_json_records(tmp_path):
    from analysis.report.sections import _compute_floor_text

    assert _compute_floor_text(tmp_path) is None  # no sweep.json: no line
    record = {"literal_example_passes": 12168.0, "flop": 2.05e14, "peak_gflops": 93.0, "jobs": 2}
    record.update(floor_s=1102.2, wall_s=1433.0, ratio=1.3, runs=17)
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "ablation", "compute": record, "runs": []}))
    assert _compute_floor_text(tmp_path) == (
        "**1.30× the compute floor**: the last `experiments.sweep` call that trained runs took 23.9 min for 17 runs "
        "on 2 one-thread slots, against a floor of 18.4 min (12,168 literal example-passes, 205.0 TFLOP, at the 93.0 "
        "GFLOP/s single-thread sgemm peak measured at its end; evaluation, diagnostics and start-up count as "
        "overhead, replay shortcuts as gain)"
    )
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "ablation", "compute": None, "runs": []}))
    assert _compute_floor_text(tmp_path) is None  # the last call's runs could not be compared with a floor
