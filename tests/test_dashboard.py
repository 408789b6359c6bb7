"""analysis.dashboard: the sweep's W&B workspace (and report) built offline from a hand-made sweep, read back as the
spec wandb-workspaces would save."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from analysis import dashboard
from experiments.rundir import report_dir
from experiments.tracking import wandb_config
from tests.analysis_fixtures import make_sweep

ARMS = ("adamw", "sam_full", "sam_last")


@pytest.fixture
def synth(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return make_sweep(tmp_path, "synth", arms=ARMS, ks=(1, 4), seeds=(0, 1), special=False)


def panels_by_section(spec: dict) -> dict[str, list[dict]]:
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    return {s["name"]: s["panels"] for s in sections}


def test_the_workspace_of_a_sweep_offline(synth, tmp_path, capsys):
    assert dashboard.main(["synth", f"results_dir={tmp_path}"]) == 0
    folder = report_dir(tmp_path, "synth")
    assert str(folder / "wandb_workspace.json") in capsys.readouterr().out
    spec = json.loads((folder / "wandb_workspace.json").read_text())
    sections = panels_by_section(spec)
    assert list(sections) == ["The answer", "Cost", "Diagnostics", "Final scores"]

    def line(panel):
        assert panel["viewType"] == "Run History Line Plot"
        c = panel["config"]
        assert c["xAxis"] == "update" and (c["groupAgg"], c["groupArea"]) == ("mean", "stderr")  # seed bands
        return c["metrics"]

    assert [line(p) for p in sections["The answer"]] == [["dev/f1"], ["dev/loss"]]
    assert [line(p) for p in sections["Cost"]] == [["train/step_time"]]
    assert [line(p) for p in sections["Diagnostics"]] == [["diag/grad_cos"]]
    finals = sections["Final scores"]
    assert {p["viewType"] for p in finals} == {"Bar Chart"}
    assert [p["config"]["metrics"] for p in finals] == [
        [f"summary_metrics.final/{k}"] for k in ("dev/f1", "dev/em", "dev/loss")
    ]

    (runset,) = spec["spec"]["section"]["runSets"]
    assert runset["grouping"] == [{"section": "config", "name": "arm.value"}, {"section": "config", "name": "k.value"}]
    (rule,) = runset["filters"]["filters"]
    assert (rule["key"], rule["op"], rule["value"]) == ({"section": "config", "name": "sweep_name"}, "=", "synth")
    assert spec["spec"]["section"]["settings"]["xAxis"] == "update"

    # the file is a spec wandb-workspaces itself reads back (what `save()` would upload)
    from wandb_workspaces.workspaces import Workspace, internal

    loaded = Workspace._from_model(internal.View.model_validate(spec))
    assert [s.name for s in loaded.sections] == list(sections)
    assert [g.name for g in loaded.runset_settings.groupby] == ["arm", "k"]

    # the filter and the grouping name keys the runs' W&B config really has, with these values (experiments.tracking)
    for run in synth.runs:
        config = wandb_config(OmegaConf.load(run.path / "config.yaml"))
        assert config[rule["key"]["name"]] == "synth"
        assert (config["arm"], config["k"]) == (run.arm, run.k)


def test_the_report_has_the_headline_and_one_answer_grid_per_k(synth, tmp_path):
    folder = report_dir(tmp_path, "synth")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "headline.md").write_text("## The answer\n\n**Answer: yes.** made up\n")
    assert dashboard.main(["synth", f"results_dir={tmp_path}"]) == 0
    from wandb_workspaces.reports.v2.internal import ReportViewspec

    report = json.loads((folder / "wandb_report.json").read_text())
    ReportViewspec.model_validate(report)  # a spec wandb-workspaces reads back
    blocks = report["spec"]["blocks"]
    assert any(b.get("content", "").startswith("## The answer\n\n**Answer: yes.**") for b in blocks)
    grids = [b["metadata"] for b in blocks if b["type"] == "panel-grid"]
    answer = grids[:2]  # k = 4, then k = 1
    for grid, k in zip(answer, (4, 1)):
        (runset,) = grid["runSets"]
        keys = {(f["key"]["name"], f["value"]) for f in runset["filters"]["filters"]}
        assert keys == {("sweep_name", "synth"), ("k", k)}
        panels = grid["panelBankSectionConfig"]["panels"]
        assert [(p["config"]["metrics"], p["config"]["groupBy"]) for p in panels] == [
            (["dev/f1"], "arm.value"),
            (["dev/loss"], "arm.value"),
        ]
    assert len(grids) == 2 + 3  # the answer per k, then cost, diagnostics, final scores


def test_a_metric_added_to_the_table_gets_a_panel(synth, monkeypatch):
    """A row of experiments.metrics given the "cost" section gets a panel there, titled by its label."""
    import dataclasses

    from experiments import metrics

    rows = tuple(dataclasses.replace(m, dashboard=("cost",)) if m.key == "train/loss" else m for m in metrics.METRICS)
    monkeypatch.setattr(metrics, "METRICS", rows)
    design = dashboard.design_of(synth.results_dir, "synth")
    sections = panels_by_section(json.loads(dashboard.spec_json(dashboard.build_workspace(design))))
    assert sorted(p["config"]["metrics"] for p in sections["Cost"]) == [["train/loss"], ["train/step_time"]]
    assert dashboard.label("train/loss") == "train loss"


def test_the_design_comes_from_the_runs_and_rebuilds_are_identical(synth):
    design = dashboard.design_of(synth.results_dir, "synth")
    assert (design.arms, design.ks, design.project) == (ARMS, (4, 1), "sam-accum")
    one, two = (dashboard.spec_json(dashboard.build_workspace(design)) for _ in range(2))
    assert one == two


def test_bad_input_is_one_line_and_exit_2(synth, tmp_path, capsys):
    assert dashboard.main(["nothing", f"results_dir={tmp_path}"]) == 2
    assert "no runs of sweep 'nothing'" in capsys.readouterr().err
    assert dashboard.main(["synth", f"results_dir={tmp_path}", "--report"]) == 2
    assert dashboard.main(["synth", "resultsdir=x"]) == 2
