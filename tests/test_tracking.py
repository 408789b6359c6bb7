"""The run directory written by RunTracker, and the offline W&B run read back from its transaction log."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import tracking
from experiments.config import config_hash, load_config
from experiments.provenance import env_info, git_info
from experiments.rundir import atomic_write_json, atomic_write_text, read_metrics
from experiments.tracking import RunTracker, TrackingError
from tests.conftest import REPO, offline_wandb_history, wandb_records


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    for key, value in {
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }.items():
        monkeypatch.setenv(key, value)


def make_cfg(mode="offline", *extra):
    return load_config(
        [],
        [
            f"tracking.mode={mode}",
            "arm=sam_last",
            "optim.replay=last",
            "train.accumulation_steps=4",
            "optim.rho=0.1",
            "seed=3",
            "sweep=unit",
            "tracking.tags=[extra-tag]",
            *extra,
        ],
    )


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def log_three(tracker: RunTracker) -> list[dict]:
    sent = [
        ({"train/loss": np.float32(2.5), "train/lr": 1e-4, "train/grad_norm": 3.0}, 1, 0.25, 32),
        ({"train/loss": 2.0, "train/lr": 2e-4, "train/grad_norm": 2.0}, 2, 0.5, 64),
        ({"dev/loss": 1.5, "dev/em": 40.0, "dev/f1": 55.5, "eval/kind": "epoch"}, 2, 0.5, 64),
    ]
    for metrics, update, epoch, examples in sent:
        tracker.log(metrics, update=update, epoch=epoch, examples=examples)
    return [
        {
            **{k: (float(v) if isinstance(v, np.floating) else v) for k, v in m.items()},
            "update": u,
            "epoch": e,
            "examples": n,
        }
        for m, u, e, n in sent
    ]


# ---------------------------------------------------------------------------------------------------------------------
# the run directory


def test_offline_run_directory_and_wandb_mirror(tmp_path):
    run_dir = tmp_path / "runs" / "unit" / "sam_last-k4-s3-abc"
    cfg = make_cfg()
    tracker = RunTracker(cfg, run_dir)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "running" and summary["reason"] is None
    assert summary["run_id"] == run_dir.name
    assert summary["arm"] == "sam_last" and summary["replay"] == "last"
    assert summary["config_hash"] == config_hash(cfg)

    expected = log_three(tracker)
    tracker.update_summary({"best": {"metric": "dev/f1", "value": 55.5, "update": 2}}, updates=2)
    final = tracker.finish("completed", examples=64)

    # config.yaml is the resolved config and loads back to the same values
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["optim"]["replay"] == "last" and saved["train"]["accumulation_steps"] == 4
    assert saved["tracking"]["tags"] == ["extra-tag"]

    # env.json: this file lives in a git repository, so the sha is known
    env = json.loads((run_dir / "env.json").read_text())
    assert isinstance(env["git"]["sha"], str) and len(env["git"]["sha"]) == 40
    assert isinstance(env["git"]["dirty"], bool)
    assert {"torch", "transformers", "datasets", "wandb", "omegaconf", "numpy"} <= set(env["packages"])
    assert env["device"]["type"] == "cpu" and env["device"]["threads"] >= 1
    assert env["python"].count(".") == 2 and env["started_at"] and env["hostname"]

    # metrics.jsonl: one parseable line per log call, with the step keys and the values sent
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    events = [json.loads(line) for line in lines]
    assert events == read_metrics(run_dir)
    for event, sent in zip(events, expected):
        assert event.pop("time") >= 0
        assert event == pytest.approx(sent)

    # summary.json: running → completed, merged fields kept
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == final
    assert summary["status"] == "completed" and summary["reason"] is None
    assert summary["best"]["value"] == 55.5 and summary["updates"] == 2 and summary["examples"] == 64
    assert summary["finished_at"] and summary["wall_time_s"] >= 0

    # no temporary files are left behind by the atomic writes
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]

    # the offline W&B run lives in run_dir/wandb/ and holds the same history
    (offline,) = offline_runs(run_dir)
    records = wandb_records(offline)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert len(history) == 3
    for item, sent in zip(history, expected):
        for key, value in sent.items():
            assert item[key] == pytest.approx(value), key
    assert history[2]["eval/kind"] == "epoch"

    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["display_name"] == run_dir.name
    assert run["run_id"] == summary["wandb"]["id"] and run["run_id"].startswith(run_dir.name)
    assert run["run_group"] == "unit"  # the sweep name, since tracking.group is null
    assert run["job_type"] == "sam_last"  # the arm, since tracking.job_type is null
    assert set(run["tags"]) == {"sam_last", "replay=last", "k=4", "rho=0.1", "seed=3", "sweep=unit", "extra-tag"}
    config = run["config"]["update"]
    assert config["optim"]["replay"] == "last" and config["train"]["accumulation_steps"] == 4
    # the keys a dashboard filters and groups by, at the top level (wandb-workspaces cannot group by the W&B group)
    assert {key: config[key] for key in ("arm", "k", "seed", "sweep", "sweep_name")} == {
        "arm": "sam_last",
        "k": 4,
        "seed": 3,
        "sweep": "unit",
        "sweep_name": "unit",
    }

    # the x-axis of every chart is the update
    metric_defs = [r["metric"] for r in records if r["type"] == "metric"]
    assert any(m.get("glob_name") == "*" and m.get("step_metric") == "update" for m in metric_defs)

    exits = [r["exit"] for r in records if r["type"] == "exit"]
    assert exits and exits[-1].get("exit_code", 0) == 0


def test_disabled_mode_writes_no_wandb_folder(tmp_path):
    tracker = RunTracker(make_cfg("disabled"), tmp_path / "run")
    tracker.log({"train/loss": 1.0}, update=1, epoch=0.1, examples=8)
    tracker.finish("completed")
    assert not (tmp_path / "run" / "wandb").exists()
    assert [e["train/loss"] for e in read_metrics(tmp_path / "run")] == [1.0]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["wandb"] == {"mode": "disabled", "id": None}


def test_explicit_group_job_type_and_project(tmp_path):
    cfg = make_cfg("offline", "tracking.group=my-group", "tracking.job_type=probe", "tracking.project=other")
    tracker = RunTracker(cfg, tmp_path / "run")
    tracker.finish("completed")
    run = next(r["run"] for r in wandb_records(offline_runs(tmp_path / "run")[0]) if r["type"] == "run")
    assert (run["run_group"], run["job_type"], run["project"]) == ("my-group", "probe", "other")


def test_fields_over_wandbs_limits_are_shortened_distinctly_in_the_offline_record(tmp_path):
    """W&B's server refuses job_type and tags over 64 characters and group and display name over 128 (an offline run
    is written anyway and then fails at `wandb sync`). Read back from the offline run: every field within its limit,
    shortened to its first characters + "-" + 8 hex digits of the SHA-256 of the whole text."""
    import hashlib

    def short(text, limit):  # the rule, written out
        return text[: limit - 9] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]

    arm = "my-own-arm-label-" + "x" * 60  # 77 characters, a user's arm label
    group = "g" * 130
    tag_a, tag_b = "t" * 70 + "a", "t" * 70 + "b"  # equal in their first 64 characters
    name = "n" * 140
    cfg = make_cfg(
        "offline", f"arm={arm}", "custom_arm=true", f"tracking.group={group}", f"tracking.tags=[{tag_a}, {tag_b}, ok]"
    )
    tracker = RunTracker(cfg, tmp_path / name)
    tracker.finish("completed")
    run = next(r["run"] for r in wandb_records(offline_runs(tmp_path / name)[0]) if r["type"] == "run")
    assert run["job_type"] == short(arm, 64) and len(run["job_type"]) == 64
    assert run["run_group"] == short(group, 128) and len(run["run_group"]) == 128
    assert run["display_name"] == short(name, 128)
    assert set(run["tags"]) == {
        short(arm, 64),
        "replay=last",
        "k=4",
        "rho=0.1",
        "seed=3",
        "sweep=unit",
        short(tag_a, 64),
        short(tag_b, 64),
        "ok",
    }
    assert len(run["tags"]) == 9 and all(len(t) <= 64 for t in run["tags"])  # none lost, none doubled
    wandb_block = json.loads((tmp_path / name / "summary.json").read_text())["wandb"]
    assert (wandb_block["job_type"], wandb_block["group"]) == (short(arm, 64), short(group, 128))
    # fields within the limits go as they are
    assert tracking.fit_wandb("a" * 64, 64) == "a" * 64


@pytest.mark.parametrize(
    "override, message",
    [
        ("tracking.project=" + "p" * 129, "has 129 characters (W&B allows 128)"),
        ("tracking.project=my/project", "contains /, which W&B does not allow"),
        ("tracking.tags=[ok, '']", "tracking.tags has an empty tag, which W&B refuses"),
        ("tracking.job_type=", "tracking.job_type is empty"),
    ],
)
def test_wandb_fields_that_cannot_be_shortened_are_refused_at_config_time(override, message):
    from experiments.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        make_cfg("offline", override)


def test_finish_is_idempotent_and_rejects_unknown_status(tmp_path):
    tracker = RunTracker(make_cfg("disabled"), tmp_path / "run")
    with pytest.raises(ValueError):
        tracker.finish("done")
    first = tracker.finish("diverged", reason="loss is nan at update 7", updates=7)
    second = tracker.finish("failed", reason="should be ignored")
    assert first == second
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["reason"] == "loss is nan at update 7"
    with pytest.raises(RuntimeError):
        tracker.log({"train/loss": 1.0}, update=8, epoch=1.0, examples=64)


def test_failed_run_in_context_manager(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with RunTracker(make_cfg(), run_dir) as tracker:
            tracker.log({"train/loss": float("nan")}, update=1, epoch=0.1, examples=8)
            raise ZeroDivisionError("division by zero")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("ZeroDivisionError")
    assert "ZeroDivisionError" in (run_dir / "error.log").read_text()
    assert math.isnan(read_metrics(run_dir)[0]["train/loss"])  # NaN survives the round trip
    records = wandb_records(offline_runs(run_dir)[0])
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [1]
    tracker.finish("completed")  # after the context manager: a no-op
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_explicit_finish_inside_context_manager_is_kept(tmp_path):
    with RunTracker(make_cfg("disabled"), tmp_path / "run") as tracker:
        tracker.finish("diverged", reason="nan")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_log_rejects_step_keys_in_metrics(tmp_path):
    tracker = RunTracker(make_cfg("disabled"), tmp_path / "run")
    with pytest.raises(ValueError):
        tracker.log({"update": 3}, update=3, epoch=0.0, examples=0)
    tracker.finish("completed")


def test_wandb_start_failure_raises_one_line_and_marks_the_run_failed(tmp_path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise OSError("disk full\nsecond line")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.raises(TrackingError) as info:
        RunTracker(make_cfg(), tmp_path / "run")
    assert "\n" not in str(info.value) and "disk full" in str(info.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "disk full" in summary["reason"]


# ---------------------------------------------------------------------------------------------------------------------
# resume


def test_resume_keeps_history_and_the_wandb_id(tmp_path):
    run_dir = tmp_path / "run"
    first = RunTracker(make_cfg(), run_dir)
    for update in (1, 2, 3):
        first.log({"train/loss": 1.0 / update}, update=update, epoch=update / 10, examples=8 * update)
    first.finish("failed", reason="killed")
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"update": 4, "train/lo')  # a write the crash cut short

    second = RunTracker(make_cfg(), run_dir, resume=True)
    assert second.rewind(2) == 1  # the checkpoint was taken at update 2; update 3 is repeated
    second.log({"train/loss": 0.3}, update=3, epoch=0.3, examples=24)
    second.finish("completed")

    events = read_metrics(run_dir)
    assert [e["update"] for e in events] == [1, 2, 3]
    assert events[-1]["train/loss"] == 0.3
    assert events[-1]["time"] >= events[1]["time"]  # the clock continues across the restart
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumes"] == 1 and summary["resumed_at"]
    assert (run_dir / "env.json").exists() and (run_dir / "env-resume-1.json").exists()
    (folder,) = offline_runs(run_dir)  # one W&B run; the first start's folder is retired, not uploaded
    assert next(r["run"]["run_id"] for r in wandb_records(folder) if r["type"] == "run") == summary["wandb"]["id"]
    assert len(list((run_dir / "wandb").glob("retired-offline-run-*"))) == 1


def history_of(items: list[dict]) -> list[dict]:
    """W&B history rows without the keys W&B adds (_step, _timestamp, _runtime)."""
    return [{k: v for k, v in item.items() if not k.startswith("_")} for item in items]


@pytest.mark.slow
def test_a_run_resumed_twice_uploads_one_wandb_run_with_each_update_once(tmp_path):
    """wandb#3841/#5865: two offline folders under one id lose one's history at sync. Here: updates 1..5, stop,
    resume from a checkpoint at 3 (4, 5 repeated), stop at 7, resume from 6, finish at 9. The one offline folder that
    is left, read back by wandb's reader, holds metrics.jsonl's events exactly: updates 1..9, each once."""
    run_dir = tmp_path / "run"

    def log(tracker, updates):
        for u in updates:
            tracker.log({"train/loss": 10.0 / u + len(offline_runs(run_dir))}, update=u, epoch=u / 9, examples=4 * u)

    first = RunTracker(make_cfg(), run_dir)
    log(first, range(1, 6))
    first.finish("failed", reason="SIGTERM")
    second = RunTracker(make_cfg(), run_dir, resume=True)
    assert second.rewind(3) == 2
    log(second, range(4, 8))
    second.finish("failed", reason="SIGTERM")
    third = RunTracker(make_cfg(), run_dir, resume=True)
    assert third.rewind(6) == 1
    log(third, range(7, 10))
    third.update_summary({"final": {"dev/f1": 61.5, "dev/loss": 0.75}})
    summary = third.finish("completed")

    events = read_metrics(run_dir)
    assert [e["update"] for e in events] == list(range(1, 10))
    history = history_of(offline_wandb_history(run_dir))
    assert [h["update"] for h in history] == list(range(1, 10))
    assert history == events  # every value as metrics.jsonl has it
    assert len(list((run_dir / "wandb").glob("retired*offline-run-*"))) == 2
    records = wandb_records(offline_runs(run_dir)[0])
    assert next(r["run"]["run_id"] for r in records if r["type"] == "run") == summary["wandb"]["id"]
    final = {}
    for record in records:  # the summary records in order: the last write of a key wins
        if record["type"] == "summary":
            final.update(record["summary"].get("update", {}))
    assert final["final/dev/f1"] == 61.5 and final["final/dev/loss"] == 0.75


def test_sync_rebuilds_a_run_split_over_several_offline_folders(tmp_path, monkeypatch, capsys):
    """A run directory written before resumes replayed their history (the old behaviour, reproduced by switching the
    retire and replay off): two folders, 1..4 and 3..6. `experiments.sync` makes it one folder with 1..6 once."""
    from experiments import sync

    run_dir = tmp_path / "runs" / "unit" / "split"
    monkeypatch.setattr(tracking, "retire_offline_runs", lambda run_dir: [])
    monkeypatch.setattr(RunTracker, "_replay", lambda self: None)
    first = RunTracker(make_cfg(), run_dir)
    for u in range(1, 5):
        first.log({"train/loss": 1.0 / u}, update=u, epoch=u / 6, examples=u)
    first.finish("failed", reason="SIGTERM")
    second = RunTracker(make_cfg(), run_dir, resume=True)
    second.rewind(2)
    for u in range(3, 7):
        second.log({"train/loss": 2.0 / u}, update=u, epoch=u / 6, examples=u)
    summary = second.finish("completed")
    assert len(offline_runs(run_dir)) == 2
    monkeypatch.undo()

    assert sync.merge_split_runs(tmp_path) == [run_dir]
    assert "rebuilt" in capsys.readouterr().out
    history = history_of(offline_wandb_history(run_dir))
    assert history == read_metrics(run_dir) and [h["update"] for h in history] == list(range(1, 7))
    (folder,) = offline_runs(run_dir)
    assert next(r["run"]["run_id"] for r in wandb_records(folder) if r["type"] == "run") == summary["wandb"]["id"]
    assert sync.merge_split_runs(tmp_path) == []  # one folder now: nothing more to do


def test_a_resumed_run_waits_while_a_killed_process_still_holds_its_wandb_id(tmp_path, monkeypatch):
    """After kill -9 the dead process's W&B service can hold the run id for a while ("run ID … is in use"); a
    resumed run retries wandb.init instead of failing. A new run, or any other error, is not retried."""
    import wandb

    from experiments import tracking

    run_dir = tmp_path / "run"
    RunTracker(make_cfg(), run_dir).finish("failed", reason="killed")
    real, calls = wandb.init, []

    def busy_twice(**kwargs):
        calls.append(kwargs["id"])
        if len(calls) <= 2:
            raise wandb.errors.CommError(f"run ID {kwargs['id']} is in use")
        return real(**kwargs)

    monkeypatch.setattr(wandb, "init", busy_twice)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    resumed = RunTracker(make_cfg(), run_dir, resume=True)
    resumed.finish("completed")
    assert len(calls) == 3 and len(set(calls)) == 1
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"

    calls.clear()
    with pytest.raises(tracking.TrackingError, match="is in use"):  # a new run: the id is its own, not retried
        RunTracker(make_cfg(), tmp_path / "fresh")
    assert len(calls) == 1


def test_fresh_start_in_an_old_directory_starts_over(tmp_path):
    run_dir = tmp_path / "run"
    old = RunTracker(make_cfg("disabled"), run_dir)
    old.log({"train/loss": 9.0}, update=1, epoch=0.1, examples=8)
    old.finish("failed", reason="x")
    new = RunTracker(make_cfg("disabled"), run_dir)
    assert read_metrics(run_dir) == []
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "running"
    new.finish("completed")


# ---------------------------------------------------------------------------------------------------------------------
# files and provenance


def test_read_metrics_tolerates_a_torn_last_line_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"update": 1, "train/loss": 2.0}\n{"update": 2, "train/loss": 1.5}\n{"update": 3, "trai')
    assert [e["update"] for e in read_metrics(path)] == [1, 2]
    assert [e["update"] for e in read_metrics(tmp_path)] == [1, 2]  # the run directory works too
    path.write_text('{"update": 1}\n{"upd\n{"update": 3}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_metrics(path)
    path.write_text("")
    assert read_metrics(path) == []


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    atomic_write_json(target, {"value": np.float64(1.5), "n": np.int64(3), "path": Path("/x")})
    atomic_write_text(tmp_path / "note.txt", "hello\n")
    assert json.loads(target.read_text()) == {"value": 1.5, "n": 3, "path": "/x"}
    assert (tmp_path / "note.txt").read_text() == "hello\n"

    class Unwritable:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": Unwritable()})
    assert json.loads(target.read_text())["n"] == 3  # the old content survives a failed write
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("summary.json", "note.txt")]
    assert leftovers == []


def test_env_info_outside_a_repository(tmp_path):
    assert git_info(tmp_path) == {"sha": None, "dirty": None, "dirty_files": None, "dirty_files_total": None}
    info = env_info("cpu")
    assert info["argv"] == sys.argv and "torch" in info["packages"]
    assert info["device"]["cuda_available"] in (True, False)


def test_env_info_git_matches_git():
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert env_info()["git"]["sha"] == sha


def test_git_info_names_the_files_that_make_a_tree_dirty(tmp_path):
    """A dirty flag alone does not say whether a run's code differed (a stray report folder) or not: the names do."""

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "train.py").write_text("a = 1\n")
    (tmp_path / "notes.md").write_text("n\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    assert git_info(tmp_path)["dirty"] is False and git_info(tmp_path)["dirty_files"] == []
    (tmp_path / "train.py").write_text("a = 2\n")  # modified
    (tmp_path / "report-smoke").mkdir()
    (tmp_path / "report-smoke" / "REPORT.md").write_text("r\n")  # an untracked folder
    info = git_info(tmp_path)
    assert info["dirty"] is True
    assert info["dirty_files"] == ["train.py", "report-smoke/"] and info["dirty_files_total"] == 2  # git's order
