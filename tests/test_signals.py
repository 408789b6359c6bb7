"""Every run ends honestly: SIGTERM (a scheduler, the sweep runner) and Ctrl-C, mid-training or during start-up, leave
summary.json `failed` with a reason, and "resumable" is said only when a resume checkpoint exists."""

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from experiments import tracking
from experiments.config import load_config
from experiments.rundir import read_metrics, run_dir
from experiments.train import main
from tests.conftest import PYTHON, REPO, SMOKE, arm_file, offline_wandb_history, run_dirs


def summary_of(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def send_to_self(sig):
    """What a scheduler or a terminal does: the signal arrives from outside, here while the code below runs."""
    os.kill(os.getpid(), sig)
    time.sleep(0.5)  # the handler raises before this returns


# ----------------------------------------------------------------------------------------------------------------------
# during start-up (in process, the real handler)


@pytest.fixture(autouse=True)
def _sigint_heard():
    """These tests need this process to hear SIGINT, but a suite started in the background by a non-interactive
    shell (`make test &` in a script, some CI runners) inherits SIGINT ignored (POSIX), and so do the pytest-xdist
    workers; main() rightly keeps an ignored signal ignored, as under nohup. Python's own handler for the test's
    duration, the inherited setting back after."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_model_and_data_load_exits_without_writing(tiny_run, tmp_path, capsys, monkeypatch, sig):
    import experiments.trainer

    real = experiments.trainer.load_model

    def load_then_signal(*args, **kwargs):
        model = real(*args, **kwargs)
        send_to_self(sig)
        return model

    monkeypatch.setattr(experiments.trainer, "load_model", load_then_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(tiny_run("sam_full", "train.max_updates=2")) == 128 + sig
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"interrupted ({signal.Signals(sig).name}) during start-up, before anything was written")
    assert not (tmp_path / "runs").exists()
    assert {s: signal.getsignal(s) for s in before} == before  # main put the handlers back


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_wandb_starts_is_recorded_in_the_summary(tiny_run, tmp_path, capsys, monkeypatch, sig):
    """RunTracker has already written summary.json (running) when W&B starts; the run must not stay `running`."""
    monkeypatch.setattr(tracking.RunTracker, "_start_wandb", lambda self, wandb_id, fields: send_to_self(sig))
    assert main(tiny_run("sam_full", "train.max_updates=2", "tracking.mode=offline")) == 128 + sig
    (run,) = run_dirs(tmp_path)
    s = summary_of(run)
    name = signal.Signals(sig).name
    assert s["status"] == "failed"
    assert s["reason"] == f"interrupted by {name} during start-up (starting W&B)"
    assert s["interrupted"] == {"signal": name, "update": 0, "resumable_from": None}
    assert f"interrupted ({name}) during start-up (starting W&B)" in capsys.readouterr().err


def test_a_signal_after_the_summary_is_final_does_not_rewrite_it(tiny_run, tmp_path, capsys, monkeypatch):
    import experiments.train

    monkeypatch.setattr(experiments.train, "remove_resume_state", lambda run_dir: send_to_self(signal.SIGTERM))
    assert main(tiny_run("sam_full", "train.max_updates=2", "train.epochs=1")) == 143
    (run,) = run_dirs(tmp_path)
    assert summary_of(run)["status"] == "completed" and "interrupted" not in summary_of(run)
    assert f"interrupted (SIGTERM) after the run ended completed: {run}" in capsys.readouterr().err


def _evaluation_fails(monkeypatch):
    import experiments.trainer

    def broken_eval(self, *args, **kwargs):
        raise RuntimeError("Connection closed by peer")  # what gloo raises on a rank whose peer was killed

    monkeypatch.setattr(experiments.trainer.Trainer, "evaluate", broken_eval)


def test_a_signal_while_a_failure_is_recorded_waits_until_the_failure_is_written(
    tiny_run, tmp_path, capsys, monkeypatch
):
    """torchrun sends SIGTERM to every rank once one died, often while rank 0 records the failure it saw itself (the
    dead peer's closed connection): the signal must not cut that recording short and leave the run `running`."""
    _evaluation_fails(monkeypatch)
    real_write = tracking.RunTracker.write_text

    def write_then_signal(self, name, text):
        if name == "error.log":
            send_to_self(signal.SIGTERM)  # arrives while the failure is being recorded
        return real_write(self, name, text)

    monkeypatch.setattr(tracking.RunTracker, "write_text", write_then_signal)
    assert main(tiny_run("adamw", "train.max_updates=2")) == 1
    (run,) = run_dirs(tmp_path)
    s = summary_of(run)
    assert s["status"] == "failed" and s["reason"] == "RuntimeError: Connection closed by peer"
    assert "Connection closed by peer" in (run / "error.log").read_text()
    assert "SIGTERM received while the run's ending was being recorded: recorded it first" in capsys.readouterr().err


@pytest.mark.parametrize("ending", ["failed", "diverged"])
def test_a_signal_just_before_an_ending_is_recorded_records_that_ending(
    tiny_run, tmp_path, capsys, monkeypatch, ending
):
    """The signal's handler can run in the few bytecodes between the exception and the block that defers signals:
    the run's entry point then records the ending that exception meant (failed, or diverged: final, not retried),
    says that a signal came, and never leaves the run `running`."""
    import experiments.train

    extra = ["optim.lr=1e30"] if ending == "diverged" else []  # lr 1e30: non-finite loss (test_train's divergence)
    if ending == "failed":
        _evaluation_fails(monkeypatch)
    real_deferred, entered = experiments.train.stop_signals_deferred, []

    @contextmanager
    def too_late():
        if not entered:  # the first ending block: the handler raised before it was entered
            entered.append(True)
            raise experiments.train.Interrupted(signal.SIGTERM)
        with real_deferred() as noted:
            yield noted

    monkeypatch.setattr(experiments.train, "stop_signals_deferred", too_late)
    code = main(tiny_run("sam_last" if ending == "diverged" else "adamw", "train.max_updates=2", *extra))
    (run,) = run_dirs(tmp_path)
    s = summary_of(run)
    err = capsys.readouterr().err
    assert "SIGTERM arrived while the run's ending was starting; recording it first" in err
    if ending == "failed":
        assert code == 1 and s["status"] == "failed" and s["reason"] == "RuntimeError: Connection closed by peer"
        assert "Connection closed by peer" in (run / "error.log").read_text()
    else:
        assert code == 3 and s["status"] == "diverged" and "non-finite" in s["reason"]
        assert not (run / "checkpoint" / "resume").exists()  # final: never resumed


# ----------------------------------------------------------------------------------------------------------------------
# mid-training (a real process, killed from outside)

ARGS = [
    SMOKE,
    arm_file("sam_full"),
    "data.generated.n_train=32",
    "data.generated.n_dev=8",
    "train.epochs=200",
    "tracking.mode=offline",
    "run_name=killed",
]


def start(results: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    args = [*ARGS, f"results_dir={results}", *extra]
    target = run_dir(load_config(args[:2], args[2:]))
    proc = subprocess.Popen(
        [PYTHON, "-m", "experiments.train", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, target


def wait_for(proc, condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def train_updates(target: Path) -> int:
    path = target / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"train/loss"' in line for line in path.read_text().splitlines())


@pytest.mark.slow
def test_sigterm_mid_training_with_a_checkpoint_says_resumable_from_its_update(tmp_path):
    proc, target = start(tmp_path, "train.checkpoint_every=3")
    resume = target / "checkpoint" / "resume" / "trainer.json"
    wait_for(proc, resume.exists, "resume checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    s = summary_of(target)
    saved = json.loads(resume.read_text())["progress"]["update"]  # the checkpoint the rerun would start from
    stopped = s["interrupted"]["update"]
    assert saved % 3 == 0 and stopped >= saved
    assert s["status"] == "failed"
    assert (
        s["reason"] == f"interrupted by SIGTERM at update {stopped} of {s['total_updates']}; "
        f"resumable from update {saved}"
    )
    assert s["interrupted"] == {"signal": "SIGTERM", "update": stopped, "resumable_from": saved}
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"interrupted (SIGTERM) at update {stopped} of {s['total_updates']}: resumable from update {saved}; "
            "rerun the same command to resume"
        )
    )
    assert "Interrupted: SIGTERM" in (target / "error.log").read_text()  # where it stopped


@pytest.mark.slow
def test_sigterm_mid_training_without_a_checkpoint_says_it_starts_over(tmp_path):
    proc, target = start(tmp_path, "train.checkpoint_every=0", "train.checkpoint_every_minutes=0")
    wait_for(proc, lambda: train_updates(target) >= 3, "three updates")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    s = summary_of(target)
    assert s["status"] == "failed" and s["interrupted"]["resumable_from"] is None
    assert s["reason"].startswith("interrupted by SIGTERM at update ")
    assert s["reason"].endswith("; not resumable (no resume checkpoint yet)")
    last = err.strip().splitlines()[-1]
    assert (
        "not resumable (no resume checkpoint yet); a rerun starts over; train.checkpoint_every=0, "
        "train.checkpoint_every_minutes=0.0: set train.checkpoint_every=N" in last
    )
    assert not (target / "checkpoint" / "resume").exists()


# ----------------------------------------------------------------------------------------------------------------------
# when resume checkpoints are written


@pytest.mark.parametrize(
    "extra, saved_at",
    [
        (("train.checkpoint_every_minutes=0.00001",), [2, 3]),  # due at every update after the first; none at the end
        (("train.checkpoint_every=2", "train.checkpoint_every_minutes=0"), [2]),
        (("train.checkpoint_every_minutes=0",), []),
        ((), []),  # the default: every 10 minutes, so a run this short never pays for one
    ],
)
def test_resume_checkpoints_by_updates_and_by_minutes_and_none_left_after_completion(
    tiny_run, tmp_path, monkeypatch, extra, saved_at
):
    import experiments.trainer

    real, seen = experiments.trainer.save_resume_state, []

    def counting(trainer):
        seen.append(trainer.progress.update)
        return real(trainer)

    monkeypatch.setattr(experiments.trainer, "save_resume_state", counting)
    assert main(tiny_run("sam_full", "train.max_updates=4", "train.epochs=1", *extra)) == 0
    assert seen == saved_at
    (run,) = run_dirs(tmp_path)
    assert summary_of(run)["status"] == "completed"
    assert not [p.name for p in (run / "checkpoint").iterdir() if p.name.startswith("resume")]  # removed at the end


def test_the_checkpoint_interval_does_not_change_the_run_id():
    """Resuming gives bitwise the uninterrupted run, so adding train.checkpoint_every=N to a rerun (as the message
    after an interrupted run suggests) must find the same run directory."""
    from experiments.config import config_hash

    plain = config_hash(load_config([SMOKE]))
    assert config_hash(load_config([SMOKE], ["train.checkpoint_every=7"])) == plain
    assert config_hash(load_config([SMOKE], ["train.checkpoint_every_minutes=1"])) == plain
    assert config_hash(load_config([SMOKE], ["optim.rho=0.07"])) != plain


@pytest.mark.slow
def test_a_run_stopped_and_resumed_leaves_one_offline_wandb_run_with_updates_1_to_n_once(tmp_path):
    """The case of wandb#3841/#5865: sam_full, 40 updates, a checkpoint every 3, SIGTERM after update 11, the same
    command again. What `make sync` would upload (the one offline-run-* folder), read back by wandb's own reader,
    holds metrics.jsonl's events: each update 1..40 once."""
    extra = ("train.max_updates=40", "train.checkpoint_every=3", "train.checkpoint_every_minutes=0")
    proc, target = start(tmp_path, *extra)
    wait_for(proc, lambda: train_updates(target) >= 11, "eleven updates")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    stopped = summary_of(target)["interrupted"]
    assert stopped["update"] >= 11 and stopped["resumable_from"] is not None

    again, _ = start(tmp_path, *extra)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-2000:]
    assert f"resuming at update {stopped['resumable_from']}" in err
    events = read_metrics(target)
    history = [{k: v for k, v in item.items() if not k.startswith("_")} for item in offline_wandb_history(target)]
    train = [h["update"] for h in history if "train/loss" in h]
    print(f"offline W&B history after the resume: train updates {train[0]}..{train[-1]} ({len(train)} rows)")
    assert train == list(range(1, 41))
    assert history == events
    assert summary_of(target)["resumes"] == 1
