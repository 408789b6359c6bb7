"""experiments/bench_ddp.py under torchrun (2 gloo processes) on a tiny random BERT: what it writes, and the gradient
all-reduces DDP performs per window, counted with its communication hook on a real transformer."""

import json
import os
import subprocess

import pytest

from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.slow


def test_tiny_bench_counts_the_all_reduces_and_writes_every_field(tmp_path):
    out = tmp_path / "bench" / "ddp.json"
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "experiments.bench_ddp",
            "--model",
            "tiny",
            "--windows",
            "2",
            "--warmup",
            "0",
            "--collective-reps",
            "2",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    buckets = result["buckets_per_window"]["none"]
    assert buckets >= 1
    # full with a global perturbation: one gradient all-reduce more than AdamW; per-rank perturbation: none more
    assert result["buckets_per_window"] == {"none": buckets, "full/global": 2 * buckets, "full/per_rank": buckets}
    for key in (
        "settings",
        "env",
        "params",
        "seconds_per_window",
        "median_seconds_per_window",
        "extra_all_reduce",
        "collective_medians_s",
        "wall_seconds",
    ):
        assert key in result, key
    assert result["settings"]["world_size"] == 2
    assert all(len(v) == 2 for v in result["seconds_per_window"].values())
    assert "extra all-reduce" in done.stdout
