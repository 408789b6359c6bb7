"""A run killed with SIGKILL resumes from its last checkpoint and ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from experiments.config import load_config
from experiments.rundir import run_dir
from experiments.train import main
from tests.conftest import PYTHON, SMOKE, arm_file

pytestmark = pytest.mark.slow

ARGS = [
    SMOKE,
    "data.generated.n_train=32",
    "data.generated.n_dev=8",
    "train.epochs=8",
    "train.checkpoint_every=4",
    "run_name=resumable",
]


def train_cmd(arm, results_dir, *extra):
    return [
        PYTHON,
        "-m",
        "experiments.train",
        *ARGS[:1],
        arm_file(arm),
        *ARGS[1:],
        f"results_dir={results_dir}",
        *extra,
    ]


def read_events(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("arm", ["sam_full"])
def test_kill_9_mid_run_then_same_command_resumes_to_identical_result(tmp_path, arm, capfd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(
        train_cmd(arm, straight, "tracking.mode=disabled"), env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]

    cmd = train_cmd(arm, killed, "tracking.mode=offline")
    target = run_dir(load_config([SMOKE, arm_file(arm)], ARGS[1:] + [f"results_dir={killed}"]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (target / "checkpoint" / "resume" / "trainer.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = json.loads((target / "summary.json").read_text())
    assert interrupted["status"] == "running"  # killed: nobody got to write an ending
    progress = json.loads((target / "checkpoint" / "resume" / "trainer.json").read_text())["progress"]
    total = interrupted["total_updates"]
    assert 0 < progress["update"] < total

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming at update" in again.stderr

    a = json.loads((straight / "runs" / "adhoc" / "resumable" / "summary.json").read_text())
    b = json.loads((target / "summary.json").read_text())
    assert b["status"] == "completed" and b["resumes"] == 1
    assert a["final"] == b["final"] and a["best"] == b["best"] and a["updates"] == b["updates"] == total
    wa = load_file(straight / "runs" / "adhoc" / "resumable" / "checkpoint" / "final" / "model.safetensors")
    wb = load_file(target / "checkpoint" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    # the metrics file reads as one run: every update once, same values as the uninterrupted run
    ea = [e for e in read_events(straight / "runs" / "adhoc" / "resumable" / "metrics.jsonl") if "train/loss" in e]
    eb = [e for e in read_events(target / "metrics.jsonl") if "train/loss" in e]
    assert [e["update"] for e in eb] == list(range(1, total + 1))
    assert [e["train/loss"] for e in ea] == [e["train/loss"] for e in eb]
    # and a third invocation (in this process: the check is the run directory's, not a process's) does nothing
    before = {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()}
    assert main(cmd[3:]) == 0 and "already completed" in capfd.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*") if p.is_file()} == before


def test_data_parallel_time_based_checkpoints_look_at_the_clock_every_ddp_clock_every_updates(monkeypatch):
    """With train.checkpoint_every_minutes on several ranks, rank 0's clock decides through a broadcast (a
    collective), taken only on updates divisible by DDP_CLOCK_EVERY (10), not at every update. Here an update takes
    5 s and a checkpoint is due after 1 min: the clock says so from update 13 on (5·13 − 5 = 60 s after the first
    look), so the broadcasts at updates 10, 20, 30 carry False, True, True and the checkpoints fall on 20 and 30."""
    from types import SimpleNamespace

    import experiments.trainer as trainer_module
    from experiments.trainer import DDP_CLOCK_EVERY, Trainer

    clock = {"now": 0.0}
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    broadcasts = []

    class TwoRanks:  # experiments.distributed.Dist's broadcast as rank 0 sees it: its own value comes back
        world_size = 2

        def broadcast(self, obj):
            broadcasts.append((fake.progress.update, obj))
            return obj

    fake = SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(checkpoint_every=0, checkpoint_every_minutes=1)),
        progress=SimpleNamespace(update=0),
        dist=TwoRanks(),
        _last_checkpoint=None,
    )
    due = []
    for update in range(1, 31):
        clock["now"] = 5.0 * update
        fake.progress.update = update
        if Trainer.checkpoint_due(fake):
            due.append(update)
    assert DDP_CLOCK_EVERY == 10
    assert broadcasts == [(10, False), (20, True), (30, True)] and due == [20, 30]
