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
