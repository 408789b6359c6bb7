"""experiments/bench_sam.py on a tiny random BERT: the whole code path, the JSON it writes, and the memory method."""

import json
import math

import pytest
import torch

from experiments import bench_sam

RHO = 0.05


def test_cpu_profiled_peak_sees_every_live_byte():
    """The CPU memory method: 4 kB kept + a 40 kB temporary inside the window → peak ≥ 44 kB, < 44 kB + slack."""

    def build():
        return torch.ones(1000)  # 4000 bytes, alive through both windows

    def run(kept):
        tmp = torch.ones(10_000)  # 40_000 bytes, freed at the end of each window
        kept.add_(tmp[:1000])

    peak = bench_sam._cpu_profiled_peak(build, run)
    assert 44_000 <= peak < 44_000 + 1_000


@pytest.mark.slow
def test_tiny_bench_writes_every_field(tmp_path):
    out = tmp_path / "bench" / "sam.json"  # the folder does not exist yet
    threads = torch.get_num_threads()
    try:  # one thread: on a loaded 2-core machine two OpenMP threads make even a tiny model 10x slower
        returned = bench_sam.main(
            [
                "--model",
                "tiny",
                "--device",
                "cpu",
                "--seq",
                "16",
                "--micro-batch",
                "2",
                "--k",
                "2",
                "--warmup",
                "0",
                "--windows",
                "2",
                "--perturb-reps",
                "3",
                "--threads",
                "1",
                "--rho",
                str(RHO),
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    for key in ("settings", "env", "params", "steps", "perturb", "memory", "targets", "wall_seconds"):
        assert key in result, key
    for key in ("git_sha", "device_name", "torch", "transformers", "pytorch_optimizer"):
        assert key in result["env"], key
    assert result["settings"]["k"] == 2 and result["settings"]["dtype"] == "fp32"

    # (a) every variant timed once per measured window; every ratio positive and finite
    steps = result["steps"]
    assert set(steps["seconds_per_window"]) == set(bench_sam.VARIANTS)
    assert all(len(ts) == 2 and min(ts) > 0 for ts in steps["seconds_per_window"].values())
    for ratios in (steps["ratios_median_of_paired"], steps["ratios_of_medians"]):
        assert set(ratios) >= {"full_over_none_plus_fb", "full_over_none", "last_over_none", "micro_over_none"}
        assert all(0 < r < math.inf for r in ratios.values())

    # (b) both implementations moved the weights to the same w + e, with ‖e‖ = rho
    perturb = result["perturb"]
    assert all(len(ts) == 3 and min(ts) > 0 for ts in perturb["seconds"].values())
    assert perturb["sanity"]["theirs"]["assert_close"] and perturb["sanity"]["theirs_foreach"]["assert_close"]
    assert abs(perturb["sanity"]["ours_norm_e"] - RHO) < 1e-4
    assert set(perturb["seconds"]) == {"ours", "theirs", "theirs_foreach", "base_only"}
    assert 0 < perturb["ratios_median_of_paired"]["ours_over_theirs"] < math.inf
    assert set(steps["cpu_ratios_median_of_paired"]) == set(steps["ratios_median_of_paired"])  # CPU time on CPU

    # (c) SAM keeps one saved copy of the weights: full needs at least one parameter copy more than none
    # (on this tiny model the two saved CPU RNG states, ~5 kB each, add ~0.1 copy on top)
    memory = result["memory"]
    assert memory["param_bytes"] == result["params"] * 4
    assert 1.0 <= memory["minus_none_copies"]["full"] < 1.5
    assert memory["peak_bytes"]["none"] > 3 * memory["param_bytes"]  # weights + AdamW's two moments at least

    for name, verdict in result["targets"].items():
        assert verdict["value"] > 0 and isinstance(verdict["pass"], bool), name
