"""experiments.rundir.run_state: one decision for train.prepare_run_dir and sweep.plan, row by row of its table."""

import json

import pytest
from omegaconf import OmegaConf

from experiments import sweep
from experiments.config import config_hash, load_config
from experiments.rundir import (
    EXIT_SIGNAL_BASE,
    read_json,
    report_dir,
    run_dir,
    run_state,
    signal_exit_code,
    sweep_dir,
)
from experiments.sweep_spec import Run
from experiments.train import prepare_run_dir


@pytest.fixture
def cfg(tmp_path):
    return load_config([], [f"results_dir={tmp_path}", "sweep=s", "run_name=r"])


def folder_of(cfg):
    path = run_dir(cfg)
    path.mkdir(parents=True)
    return path


def write_summary(path, **summary):
    (path / "summary.json").write_text(json.dumps(summary))


def sweep_action(cfg):
    run = Run(1, {}, [], [], cfg, "r", run_dir(cfg))
    sweep.plan(run)
    return run.action, run.status


def test_layout(tmp_path, cfg):
    assert run_dir(cfg) == tmp_path / "runs" / "s" / "r" == sweep_dir(tmp_path, "s") / "r"
    assert report_dir(tmp_path, "ablation") == tmp_path / "report"
    assert report_dir(tmp_path, "smoke") == tmp_path / "report-smoke"
    assert signal_exit_code(2) == EXIT_SIGNAL_BASE + 2 == 130


def test_missing_or_empty_folder_is_new(cfg):
    assert run_state(cfg, run_dir(cfg)).decision == "new"
    folder_of(cfg)
    assert prepare_run_dir(cfg, run_dir(cfg)) == "new"
    assert sweep_action(cfg) == ("run", "pending")


def test_summary_with_another_hash_is_a_conflict_for_both(cfg):
    write_summary(folder_of(cfg), status="completed", config_hash="0123456789")
    state = run_state(cfg, run_dir(cfg))
    assert (state.decision, state.stored_hash, state.own_hash) == ("conflict", "0123456789", config_hash(cfg))
    with pytest.raises(ValueError, match="holds a different config"):
        prepare_run_dir(cfg, run_dir(cfg))
    assert sweep_action(cfg) == ("conflict", "skipped")


def test_config_yaml_of_another_config_without_summary(cfg):
    other = load_config([], ["seed=99"])
    (folder_of(cfg) / "config.yaml").write_text(OmegaConf.to_yaml(other, resolve=True))
    assert run_state(cfg, run_dir(cfg)).decision == "conflict"
    assert sweep_action(cfg) == ("run", "pending")  # the sweep starts it; train refuses it (exit code 2)


@pytest.mark.parametrize("status", ["completed", "diverged"])
def test_done_runs(cfg, status):
    write_summary(folder_of(cfg), status=status, config_hash=config_hash(cfg))
    assert prepare_run_dir(cfg, run_dir(cfg)) == status
    assert sweep_action(cfg) == ("skip", status)


def test_done_without_a_hash_is_left_to_train(cfg):
    folder = folder_of(cfg)
    write_summary(folder, status="completed")
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    assert prepare_run_dir(cfg, run_dir(cfg)) == "completed"
    assert sweep_action(cfg) == ("rerun", "pending")


def test_failed_run_resumes_from_a_checkpoint_else_restarts(cfg):
    folder = folder_of(cfg)
    write_summary(folder, status="failed", config_hash=config_hash(cfg))
    assert prepare_run_dir(cfg, folder) == "restart"
    (folder / "checkpoint" / "resume.old").mkdir(parents=True)
    assert prepare_run_dir(cfg, folder) == "resume"
    assert sweep_action(cfg) == ("rerun", "pending")


def test_a_summary_that_is_not_an_object_counts_as_none(cfg):
    folder = folder_of(cfg)
    (folder / "summary.json").write_text("[1, 2]")
    assert read_json(folder / "summary.json") is None
    assert prepare_run_dir(cfg, folder) == "restart"
    assert sweep_action(cfg) == ("run", "pending")


# ---------------------------------------------------------------------------------------------------------------------
# issue 21 item 4: a completed run of changed inputs is a conflict, never a stale "already completed"


def test_a_corrected_data_file_is_refused_naming_the_file_and_both_hashes(tiny_run, tmp_path, capsys):
    import hashlib
    import shutil

    from experiments.train import main
    from tests.conftest import REPO

    train, dev = tmp_path / "train.json", tmp_path / "dev.jsonl"
    shutil.copy(REPO / "tests/data/sample_train.json", train)
    shutil.copy(REPO / "tests/data/sample_dev.jsonl", dev)
    args = tiny_run("sam_full", f"data.train_file={train}", f"data.validation_file={dev}", "train.max_updates=1")
    args = [a for a in args if not a.startswith("data.generated.")]  # not read with files (a note says so)
    assert main(args) == 0
    assert main(args) == 0 and "already completed" in capsys.readouterr().err  # same bytes: the result stands
    old = hashlib.sha256(dev.read_bytes()).hexdigest()
    # a corrected gold answer: "Dagan Pellow" → "Dagan" (still at answer_start 100 of its context)
    dev.write_text(dev.read_text().replace('{"text": ["Dagan Pellow"]', '{"text": ["Dagan"]', 1))
    new = hashlib.sha256(dev.read_bytes()).hexdigest()
    assert old != new
    (run,) = list((tmp_path / "runs" / "adhoc").iterdir())
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1:]
        == [  # after the note that data.generated.* (from smoke.yaml) is not read
            f"error: data.validation_file={dev} changed since this run read it (sha256 {old[:12]} then, {new[:12]} "
            f"now): run directory {run} holds the result of the old input; delete it to train on the new one (or set "
            "run_name=... to keep both)"
        ]
    )
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    # the sweep reports it as a conflict, not as completed
    cfg = load_config(args[:2], args[2:])
    state = run_state(cfg, run)
    assert state.decision == "conflict" and state.changed_input.startswith("data.validation_file=")
    assert sweep_action(load_config(args[:2], [*args[2:], "sweep=s", "run_name=r"])) == ("run", "pending")
    moved = run_dir(load_config(args[:2], [*args[2:], "sweep=s", "run_name=r"]))
    moved.parent.mkdir(parents=True)
    shutil.copytree(run, moved)
    assert sweep_action(load_config(args[:2], [*args[2:], "sweep=s", "run_name=r"])) == ("conflict", "skipped")


def test_a_changed_local_model_folder_is_a_conflict(cfg, tmp_path):
    from experiments.rundir import model_dir_fingerprint, model_input_record

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 32}')
    mine = load_config([], [f"results_dir={tmp_path}", "sweep=s", "run_name=r", f"model.name_or_path={model}"])
    record = model_input_record(mine)
    assert record == {"path": str(model.resolve()), "fingerprint": model_dir_fingerprint(model)}
    folder = folder_of(mine)
    write_summary(folder, status="completed", config_hash=config_hash(mine), model_input=record)
    assert run_state(mine, folder).decision == "completed"
    (model / "config.json").write_text('{"hidden_size": 64}')  # size changes (and mtime)
    state = run_state(mine, folder)
    assert state.decision == "conflict"
    assert state.changed_input == (
        f"model.name_or_path={model} changed since this run read it (files fingerprint "
        f"{record['fingerprint'][:12]} then, {model_dir_fingerprint(model)[:12]} now)"
    )
    assert sweep_action(mine) == ("conflict", "skipped")


def test_generated_data_is_not_read_to_decide(cfg, monkeypatch):
    """The generated set's content is a function of the config (hashed): run_state neither reads nor regenerates it."""
    import experiments.rundir as rundir

    folder = folder_of(cfg)
    write_summary(
        folder, status="completed", config_hash=config_hash(cfg), data={"used": {"dev": {"sha256": "0" * 64}}}
    )
    monkeypatch.setattr(rundir, "file_sha256", None)  # any call would fail
    assert run_state(cfg, folder).decision == "completed"
