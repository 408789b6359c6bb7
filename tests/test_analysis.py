"""analysis/: collect → stats → plots → report (+ notebook), on hand-computed numbers and a synthetic sweep.

The statistics are checked against values written out here (mean, std, Student-t interval, paired t); collect, the
figures, the report and the notebook run on a synthetic sweep (tests/analysis_fixtures.py) whose numbers are known.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis import figure_style, plots, report
from analysis.collect import CollectError, collect_curves, collect_runs, read_events
from analysis.report.formatting import md_table
from analysis.report.html import markdown_to_html
from analysis.report.sections import _results_section, find_sharpness
from analysis.report.tables import paired_table, primary_metric, sanity_table, summary_table
from analysis.report.text import answer, headline_table
from analysis.stats import (
    curve_equality,
    equality_check,
    paired_differences,
    summarize,
    t_interval,
    verdict,
)
from analysis.targets import target_summary, time_to_target
from experiments.rundir import report_dir
from tests.analysis_fixtures import (
    DEVICE_NAME,
    DIVERGED,
    FAILED,
    GIT_SHA,
    NEVER_STARTED,
    config_dict,
    expected_final,
    make_sweep,
    write_run,
)
from tests.conftest import REPO

NOTEBOOK = REPO / "analysis" / "notebooks" / "report.ipynb"
SECTIONS = [
    "## The answer",
    "## Findings",
    "## Setup",
    "## Results",
    "## Updates to target",
    "## Paired differences",
    "## Sanity check: k = 1",
    "## Figures",
    "## Failed, diverged and unfinished runs",
]


# ---------------------------------------------------------------------------------------------------------------------
# stats: hand-computed values


def test_summarize_matches_hand_computed_t_interval():
    # [1, 2, 3, 4]: mean 2.5; std (ddof=1) = sqrt(5/3) = 1.2910; t_{0.975,3} = 3.1824; half = 3.1824·1.2910/2 = 2.0543
    df = pd.DataFrame({"arm": ["sam_full"] * 4 + ["adamw"], "k": [4] * 5, "final.dev/f1": [1.0, 2.0, 3.0, 4.0, 7.0]})
    table = summarize(df, "dev/f1")  # "dev/f1" finds the final.dev/f1 column
    assert list(table["arm"]) == ["adamw", "sam_full"]  # report order, not alphabetical by accident
    row = table[table["arm"] == "sam_full"].iloc[0]
    assert row["n"] == 4
    assert row["mean"] == pytest.approx(2.5)
    assert row["std"] == pytest.approx(1.2910, abs=1e-4)
    assert row["ci_half"] == pytest.approx(2.0543, abs=1e-4)
    assert row["ci_low"] == pytest.approx(2.5 - 2.0543, abs=1e-4)
    assert row["ci_high"] == pytest.approx(2.5 + 2.0543, abs=1e-4)
    single = table[table["arm"] == "adamw"].iloc[0]
    assert single["n"] == 1 and single["mean"] == 7.0
    assert math.isnan(single["std"]) and math.isnan(single["ci_low"]) and math.isnan(single["ci_high"])


def test_summarize_skips_missing_values_and_groups_by_k():
    df = pd.DataFrame({"arm": ["a"] * 5, "k": [1, 1, 1, 2, 2], "m": [1.0, 3.0, np.nan, 10.0, 14.0]})
    table = summarize(df, "m", by=("arm", "k"))
    assert list(table["k"]) == [1, 2]
    assert list(table["n"]) == [2, 2]
    assert list(table["mean"]) == [2.0, 12.0]
    # n=2: t_{0.975,1} = 12.7062, s = sqrt(2), half = 12.7062·sqrt(2)/sqrt(2) = 12.7062
    assert table.iloc[0]["ci_half"] == pytest.approx(12.7062, abs=1e-4)
    assert t_interval([5.0])[0] == 5.0 and math.isnan(t_interval([5.0])[1])


def _paired_frame(a_vals, b_vals, k=4, a="sam_full", b="sam_last", seeds=None):
    seeds = list(range(len(a_vals))) if seeds is None else seeds
    rows = [{"arm": a, "k": k, "seed": s, "final.dev/f1": v} for s, v in zip(seeds, a_vals)]
    rows += [{"arm": b, "k": k, "seed": s, "final.dev/f1": v} for s, v in zip(seeds, b_vals)]
    return pd.DataFrame(rows)


def test_paired_differences_known_mean_and_t_test():
    a_vals = [10.0, 12.0, 14.0, 16.0, 18.0]
    diffs = [1.0, 2.0, 3.0, 2.0, 2.0]  # mean 2.0, std sqrt(0.5) = 0.70711
    b_vals = [x - d for x, d in zip(a_vals, diffs)]
    table = paired_differences(_paired_frame(a_vals, b_vals), "dev/f1", "sam_full", "sam_last")
    assert len(table) == 1
    row = table.iloc[0]
    assert row["n"] == 5 and row["k"] == 4
    assert row["mean_diff"] == pytest.approx(2.0)
    assert row["std_diff"] == pytest.approx(0.70711, abs=1e-5)
    # paired t: t = 2.0 / (0.70711/sqrt(5)) = 6.32456 with 4 degrees of freedom; two-sided p = 2·P(T_4 > 6.32456)
    from scipy import stats as sps

    assert row["p_value"] == pytest.approx(2 * sps.t.sf(6.32456, 4), rel=1e-4)
    assert row["p_value"] == pytest.approx(0.0032, abs=1e-4)
    # the interval is the t-test's own: 2.0 ± t_{0.975, 4} · 0.70711/sqrt(5)
    half = sps.t.ppf(0.975, 4) * math.sqrt(0.5) / math.sqrt(5)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-9)
    assert row["verdict"] == "sam_full better (dev F1, p = 0.0032)"  # n = 5: no low-power note
    assert row["pairs"] == "0,1,2,3,4" and row["unpaired"] == ""


def test_paired_differences_verdicts_both_ways_and_low_power():
    a_vals, b_vals = [10.0, 12.0, 14.0], [13.0, 15.5, 16.0]  # a − b = −3, −3.5, −2
    lower = paired_differences(_paired_frame(a_vals, b_vals), "final.dev/f1", "sam_full", "sam_last").iloc[0]
    assert lower["mean_diff"] == pytest.approx(-8.5 / 3)
    # t = mean / (s/√3) with s = sqrt(7/12); 2 degrees of freedom: p = 1 − |t| / sqrt(2 + t²) = 0.0234
    t = (-8.5 / 3) / (math.sqrt(7 / 12) / math.sqrt(3))
    assert lower["p_value"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-9)
    assert lower["verdict"] == "sam_full worse (dev F1, p = 0.023) (n=3: low power)"
    swapped = paired_differences(_paired_frame(a_vals, b_vals), "final.dev/f1", "sam_last", "sam_full").iloc[0]
    assert swapped["verdict"] == "sam_last better (dev F1, p = 0.023) (n=3: low power)"
    # on a loss the words are lower/higher loss, never better/worse
    frame = _paired_frame(b_vals, a_vals, a="sam_micro", b="sam_full").rename(
        columns={"final.dev/f1": "final.dev/loss"}
    )
    loss = paired_differences(frame, "final.dev/loss", "sam_micro", "sam_full").iloc[0]
    assert loss["verdict"] == "sam_micro higher loss (dev loss, p = 0.023) (n=3: low power)"
    spans = paired_differences(
        _paired_frame([1.0, 2.0, 3.0], [2.0, 1.0, 3.5]), "final.dev/f1", "sam_full", "sam_last"
    ).iloc[0]
    assert spans["verdict"].startswith("no significant difference (paired t-test p = ")
    assert spans["ci_low"] < 0 < spans["ci_high"] and spans["p_value"] >= 0.05
    assert verdict("x", "y", 0.3, 0.01, 3) == "x > y (p = 0.01) (n=3: low power)"
    assert verdict("x", "y", -0.3, 0.01, 8) == "x < y (p = 0.01)"
    assert verdict("x", "y", -0.3, 0.4, 8) == "no significant difference (paired t-test p = 0.4)"


def test_paired_differences_pairs_by_seed_per_k_and_handles_too_few():
    df = pd.concat(
        [
            _paired_frame([5.0, 6.0, 7.0], [4.0, 4.0, 4.0], k=2, seeds=[0, 1, 2]),
            _paired_frame([9.0], [1.0], k=8, seeds=[0]),
            pd.DataFrame([{"arm": "sam_full", "k": 2, "seed": 9, "final.dev/f1": 100.0}]),  # seed 9 has no partner
        ],
        ignore_index=True,
    )
    table = paired_differences(df, "dev/f1", "sam_full", "sam_last", by=("k",))
    assert list(table["k"]) == [2, 8]
    k2, k8 = table.iloc[0], table.iloc[1]
    assert k2["n"] == 3 and k2["mean_diff"] == pytest.approx(2.0) and k2["unpaired"] == "9"
    assert k8["n"] == 1 and k8["mean_diff"] == pytest.approx(8.0)
    assert math.isnan(k8["ci_low"]) and math.isnan(k8["p_value"])
    assert k8["verdict"] == "not enough pairs for a test (n=1)"


def test_paired_differences_are_deterministic_and_an_equal_shift_has_no_test():
    df = _paired_frame([1.0, 2.5, 3.0, 4.5], [0.0, 2.0, 2.0, 3.0])
    one = paired_differences(df, "dev/f1", "sam_full", "sam_last")
    assert one.equals(paired_differences(df, "dev/f1", "sam_full", "sam_last"))
    # every seed differs by exactly 2: s = 0, no spread to test against, so no interval either
    shift = paired_differences(_paired_frame([3.0, 4.0, 5.0], [1.0, 2.0, 3.0]), "dev/f1", "sam_full", "sam_last")
    row = shift.iloc[0]
    assert math.isnan(row["p_value"]) and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert row["verdict"] == "sam_full − sam_last is the same on every pair: no spread to test against (n=3)"


def test_equality_check_pass_and_fail():
    rows = []
    for seed, (f1, loss) in enumerate([(70.25, 1.2345), (68.5, 1.3)]):
        rows.append({"arm": "sam_full", "k": 1, "seed": seed, "final.dev/f1": f1, "final.dev/loss": loss})
        rows.append({"arm": "sam_last", "k": 1, "seed": seed, "final.dev/f1": f1, "final.dev/loss": loss + 1e-9})
    rows.append({"arm": "sam_last", "k": 4, "seed": 0, "final.dev/f1": 1.0, "final.dev/loss": 9.0})  # k=4: ignored
    df = pd.DataFrame(rows)
    f1 = equality_check(df, "dev/f1")
    assert f1["passed"] is True and f1["max_abs_diff"] == 0.0 and f1["tol"] == 0.0 and f1["n"] == 2
    loss = equality_check(df, "dev/loss")  # losses: within 1e-6
    assert loss["passed"] is True and loss["max_abs_diff"] == pytest.approx(1e-9, abs=1e-12)

    df.loc[(df["arm"] == "sam_last") & (df["seed"] == 1), "final.dev/f1"] += 1e-9  # F1 must match exactly
    df.loc[(df["arm"] == "sam_last") & (df["seed"] == 0), "final.dev/loss"] += 1e-3
    bad_f1, bad_loss = equality_check(df, "dev/f1"), equality_check(df, "final.dev/loss")
    assert bad_f1["passed"] is False and bad_f1["verdict"].startswith("FAIL")
    assert bad_loss["passed"] is False and bad_loss["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert equality_check(df, "dev/f1", k=2)["passed"] is None  # nothing at k=2: not checked


def test_curve_equality_on_long_frame():
    rows = []
    for arm, shift in (("sam_full", 0.0), ("sam_last", 0.0), ("adamw", 5.0)):
        for update in (1, 2, 3):
            rows.append(
                {
                    "run_id": arm,
                    "arm": arm,
                    "k": 1,
                    "seed": 0,
                    "update": update,
                    "metric": "train/loss",
                    "value": 1.0 / update + shift,
                }
            )
    curves = pd.DataFrame(rows)
    assert curve_equality(curves)["passed"] is True
    curves.loc[(curves["arm"] == "sam_last") & (curves["update"] == 3), "value"] += 1e-4
    result = curve_equality(curves)
    assert result["passed"] is False and result["max_abs_diff"] == pytest.approx(1e-4, rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# collect, on the synthetic sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("results"), "synth")


@pytest.fixture(scope="module")
def frames(sweep):
    runs = collect_runs(sweep.results_dir, sweep.sweep)
    return runs, collect_curves(sweep.results_dir, sweep.sweep, runs)


@pytest.fixture(scope="module")
def built(sweep, frames):
    # a sharpness section as analysis.sharpness would leave it, with one figure of its own
    out = report_dir(sweep.results_dir, sweep.sweep)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig = figure_style.Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1, 2], [3, 1, 2], color="tab:purple")
    figure_style.save(fig, out / "figures" / "sharpness_lambda.png")
    (out / "sharpness.md").write_text(
        "# Sharpness of the final checkpoints\n\nTop Hessian eigenvalue per arm.\n\n"
        "![lambda_max per arm](figures/sharpness_lambda.png)\n\n## Method\n\nPower iteration, 20 steps.\n",
        encoding="utf-8",
    )
    return report.build_report(sweep.results_dir, sweep.sweep)


def test_fixture_config_uses_the_real_schema_keys():
    from experiments.schema import Config

    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    OmegaConf.merge(schema, OmegaConf.create(config_dict("sam_last", 4, 0, "results", "synth")))  # raises if unknown


def test_collect_runs_rows_columns_and_values(sweep, frames):
    runs, _ = frames
    assert len(runs) == 24  # 4 arms × 2 k × 3 seeds, the never-started run included
    for column in [
        "run_id",
        "run_dir",
        "arm",
        "k",
        "seed",
        "optim.replay",
        "optim.rho",
        "optim.lr",
        "train.accumulation_steps",
        "model.name_or_path",
        "data.source",
        "data.generated.n_train",
        "status",
        "reason",
        "final.dev/f1",
        "final.dev/em",
        "final.dev/loss",
        "final.train/loss",
        "best.dev/f1",
        "best.metric",
        "wall_time_s",
        "mean_step_time_s",
        "updates",
        "examples",
        "git_sha",
        "device",
        "env.git.dirty",
        "env.packages.torch",
        "data_stats.train_examples",
    ]:
        assert column in runs.columns, column
    assert list(runs["arm"].unique()) == ["adamw", "sam_full", "sam_last", "sam_micro"]
    run = sweep.get("sam_last", 4, 1)
    row = runs[runs["run_id"] == run.run_id].iloc[0]
    assert row["final.dev/f1"] == expected_final("sam_last", 4, 1)["dev/f1"]
    assert row["final.train/loss"] == expected_final("sam_last", 4, 1)["train/loss"]
    assert (row["k"], row["seed"], row["optim.replay"], row["status"]) == (4, 1, "last", "completed")
    assert row["optim.betas"] == (0.9, 0.999) and row["optim.rho"] == 0.05
    assert row["git_sha"] == GIT_SHA and row["device"] == DEVICE_NAME
    assert row["updates"] == 12 and row["data_stats.train_examples"] == 96
    assert row["run_dir"] == str(run.path)

    by_cell = runs.set_index(["arm", "k", "seed"])
    for arm, k, seed, reason in (FAILED, DIVERGED, NEVER_STARTED):
        assert by_cell.loc[(arm, k, seed), "reason"] == reason
    assert by_cell.loc[FAILED[:3], "status"] == "failed"
    assert math.isnan(by_cell.loc[FAILED[:3], "final.dev/f1"])
    assert by_cell.loc[DIVERGED[:3], "status"] == "diverged"
    assert math.isnan(by_cell.loc[DIVERGED[:3], "final.train/loss"])
    never = by_cell.loc[NEVER_STARTED[:3]]
    assert never["status"] == "failed" and not never["has_summary"] and never["in_manifest"]
    assert (runs["status"] == "completed").sum() == 21


def test_collect_curves_long_frame(sweep, frames):
    runs, curves = frames
    assert list(curves.columns[:4]) == ["run_id", "arm", "replay", "k"]
    for column in ["seed", "update", "epoch", "examples", "metric", "value", "eval_kind"]:
        assert column in curves.columns
    failed = curves[curves["run_id"] == sweep.get(*FAILED[:3]).run_id]
    assert failed["update"].max() == 5  # the torn last line (update 999) is skipped
    finals = curves[(curves["eval_kind"] == "final") & (curves["metric"] == "dev/f1")]
    assert len(finals) == 21 - 0  # every completed run logs one final eval (failed/diverged do not)
    one = sweep.get("sam_full", 4, 2)
    value = finals[finals["run_id"] == one.run_id]["value"].item()
    assert value == expected_final("sam_full", 4, 2)["dev/f1"]
    assert set(curves[curves["metric"] == "diag/grad_cos"]["arm"]) == {"sam_full", "sam_last", "sam_micro"}
    k4 = curves[(curves["run_id"] == one.run_id) & (curves["metric"] == "train/loss")]
    assert list(k4["update"]) == list(range(1, 13)) and k4["epoch"].iloc[-1] == 2.0
    assert curves["k"].dtype.name == "Int64" and curves["value"].dtype == float


def test_collect_missing_sweep_and_manifest_fallbacks(tmp_path, caplog):
    with pytest.raises(CollectError, match="no sweep folder"):
        collect_runs(tmp_path, "nope")
    root = tmp_path / "runs" / "s"
    run = write_run(root, "sam_full", 2, 0, results_dir=str(tmp_path), sweep="s")
    summary = json.loads((run.path / "summary.json").read_text())
    summary.update(status="running", final=None)
    (run.path / "summary.json").write_text(json.dumps(summary))
    manifest = {"name": "s", "runs": [{"run_id": run.run_id, "status": "failed", "reason": "OOM killed"}]}
    (root / "sweep.json").write_text(json.dumps(manifest))
    row = collect_runs(tmp_path, "s").iloc[0]
    assert (row["status"], row["reason"]) == ("failed", "OOM killed")  # the process died while "running"
    # a damaged line in the middle is skipped with a warning, the rest is read
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    (run.path / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    assert len(read_events(run.path)) == len(lines)
    assert "not a JSON object" in caplog.text and "line skipped" in caplog.text


def test_a_manifest_of_another_shape_is_ignored_with_a_warning(tmp_path, caplog):
    """Only the shape experiments.sweep writes is read; a bare list of entries (which nothing writes) gives no
    fallback, so the run's own files decide: a summary stuck at "running" stays "running"."""
    root = tmp_path / "runs" / "s"
    run = write_run(root, "sam_full", 2, 0, results_dir=str(tmp_path), sweep="s")
    summary = json.loads((run.path / "summary.json").read_text())
    summary.update(status="running", final=None)
    (run.path / "summary.json").write_text(json.dumps(summary))
    (root / "sweep.json").write_text(json.dumps([{"run_id": run.run_id, "status": "failed"}]))
    assert collect_runs(tmp_path, "s").iloc[0]["status"] == "running"
    assert "sweep.json: not a JSON object" in caplog.text


# ---------------------------------------------------------------------------------------------------------------------
# plots


def test_plots_skip_cleanly_without_data(tmp_path, frames):
    runs, curves = frames
    empty_curves = curves.iloc[0:0]
    assert plots.plot_train_loss(empty_curves, tmp_path) is None
    assert plots.plot_dev_curves(empty_curves, tmp_path) is None
    assert plots.plot_grad_cos(curves[curves["metric"] != "diag/grad_cos"], tmp_path) is None
    assert plots.plot_final_scores(runs[runs["status"] != "completed"], tmp_path) is None
    assert plots.plot_step_time(runs.drop(columns=["mean_step_time_s"]), tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    assert figure_style.arm_color("sam_full") != figure_style.arm_color("sam_last")


# ---------------------------------------------------------------------------------------------------------------------
# report


def _nonblank_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert float(image[..., :3].var()) > 0


@pytest.mark.slow
def test_report_files_sections_and_figures(sweep, built):
    out = report_dir(sweep.results_dir, sweep.sweep)
    md = (out / "REPORT.md").read_text(encoding="utf-8")
    positions = [md.index(s + "\n") for s in SECTIONS]
    assert positions == sorted(positions)
    for name in ("summary.csv", "paired.csv", "REPORT.html"):
        assert (out / name).is_file()
    figures = sorted((out / "figures").glob("*.png"))
    own = [p for p in figures if not p.name.startswith("sharpness")]
    assert sorted(p.name for p in own) == sorted(plots.FIGURES.values())  # all six drawn from this sweep
    for path in figures:
        _nonblank_png(path)
        assert f"](figures/{path.name})" in md  # relative links
    html = (out / "REPORT.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(figures) == 7  # six figures + the sharpness one
    assert "<table>" in html and 'src="figures/' not in html  # self-contained
    assert html.count("<table>") == md.count("\n|:---") + md.count("\n|---:")  # every pipe table is an HTML table
    for heading in ("The answer", "Findings", "Sharpness of the final checkpoints", "Method"):
        assert re.search(rf"<h[1-6]>{heading}</h[1-6]>", html), heading
    assert "**" not in html and "![" not in html and "|---" not in html and "|:---" not in html  # no raw markdown
    # the sharpness section comes in, its title nested one level down
    assert "## Sharpness of the final checkpoints" in md and "### Method" in md
    assert md.index("## Sharpness of the final checkpoints") > md.index("## Failed, diverged")


def test_html_is_standalone_with_tables_embedded_figures_and_escaped_text(tmp_path):
    (tmp_path / "figures").mkdir()
    fig = figure_style.Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    figure_style.save(fig, tmp_path / "figures" / "a b.png")
    md = "\n".join(
        [
            "# Report `x`",
            "",
            "## Results",
            "",
            md_table(["arm", "n", "mean"], [["sam|full", 3, "1.50"], ["<script>alert(1)</script>", 2, "–"]], "lrr"),
            "",
            "![Learning curves](figures/a%20b.png)",
            "",
            "Text with **bold**, *italics*, `a < b` and p < 0.001; ![web](https://example.org/w.png).",
            "",
            "- a list item",
            "  that goes on",
            "- [a link](https://example.org)",
        ]
    )
    page = markdown_to_html(md, tmp_path, title="T <1>")
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;1&gt;</title>" in page and "<style>" in page
    assert "<h1>Report <code>x</code></h1>" in page and "<h2>Results</h2>" in page
    # the table with its cells: the escaped pipe stays in its cell, right-aligned columns stay right-aligned
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", page)
    assert cells == ["arm", "n", "mean", "sam|full", "3", "1.50", "&lt;script&gt;alert(1)&lt;/script&gt;", "2", "–"]
    assert re.search(r'<td style="text-align:\s*right"[^>]*>3</td>', page)
    assert "<script>" not in page  # raw HTML in the Markdown is shown as text, never passed through
    # the local PNG is embedded (its name has a space), a web image keeps its link, the figure has its caption
    assert page.count("data:image/png;base64,") == 1 and 'src="https://example.org/w.png"' in page
    assert re.search(
        r"<figure><img [^>]*alt=\"Learning curves\"[^>]*><figcaption>Learning curves</figcaption></figure>", page
    )
    assert "<strong>bold</strong>" in page and "<em>italics</em>" in page and "<code>a &lt; b</code>" in page
    assert "p &lt; 0.001" in page and '<a href="https://example.org">a link</a>' in page
    assert re.search(r"<li>a list item\s+that goes on</li>", page)
    assert "**" not in page and "![" not in page and "](" not in page and "|---" not in page


@pytest.mark.slow
def test_report_lists_every_run_that_did_not_complete(sweep, built):
    md = (report_dir(sweep.results_dir, sweep.sweep) / "REPORT.md").read_text(encoding="utf-8")
    failures = md[md.index("## Failed, diverged and unfinished runs") :]
    for run in sweep.not_completed:
        line = next(ln for ln in failures.splitlines() if run.run_id in ln)
        assert run.status in line and run.reason in line
    assert "21 of 24 runs completed (1 diverged, 2 failed)" in md


@pytest.mark.slow
def test_report_numbers_and_findings_come_from_the_runs(sweep, built):
    out = report_dir(sweep.results_dir, sweep.sweep)
    summary = pd.read_csv(out / "summary.csv")
    cell = summary[(summary["metric"] == "final.dev/f1") & (summary["arm"] == "sam_last") & (summary["k"] == 4)]
    values = [expected_final("sam_last", 4, s)["dev/f1"] for s in (0, 1, 2)]
    assert cell["mean"].item() == pytest.approx(np.mean(values))
    assert cell["std"].item() == pytest.approx(np.std(values, ddof=1))
    micro = summary[(summary["metric"] == "final.dev/f1") & (summary["arm"] == "sam_micro") & (summary["k"] == 4)]
    assert (micro["runs"].item(), micro["n"].item()) == (3, 2)  # the failed run counts as a run, not as a value

    paired = pd.read_csv(out / "paired.csv")
    row = paired[
        (paired["metric"] == "final.dev/f1")
        & (paired["a"] == "sam_full")
        & (paired["b"] == "sam_last")
        & (paired["k"] == 4)
    ].iloc[0]
    diff = np.mean(
        [expected_final("sam_full", 4, s)["dev/f1"] - expected_final("sam_last", 4, s)["dev/f1"] for s in (0, 1, 2)]
    )
    assert row["mean_diff"] == pytest.approx(diff)
    assert row["verdict"] == f"sam_full better (dev F1, p = {row['p_value']:.2g}) (n=3: low power)"
    assert row["p_value"] < 0.05 and row["ci_low"] > 0  # the interval agrees with the test

    md = (out / "REPORT.md").read_text(encoding="utf-8")
    findings = md[md.index("## Findings") : md.index("## Setup")]
    assert f"At k=4, sam_full − sam_last dev F1 = {diff:+.2f} [95% CI" in findings
    assert "replaying only the last micro-batch costs dev F1" in findings
    answer = md[md.index("## The answer") : md.index("## Findings")]
    assert md.index("## The answer") < md.index("## Findings") < md.index("## Setup")  # the answer leads
    assert "**Sanity check (k = 1): passed.**" in answer
    assert f"sam_full − sam_last = **{diff:+.1f} F1**" in answer and "At k = 4" in answer
    assert ": no significant difference." in findings  # sam_micro vs sam_full: no built-in effect
    sanity = pd.read_csv(out / "sanity.csv")
    assert sanity["passed"].all() and set(sanity["b"]) == {"sam_last", "sam_micro"}  # every arm with k = 1 runs
    assert (sanity.loc[sanity["b"] == "sam_last", "n"] == 3).all()  # (one of sam_micro's k = 1 runs failed)
    setup = md[md.index("## Setup") : md.index("## Results")]
    assert DEVICE_NAME in setup and GIT_SHA[:12] in setup and "k = 1, 4" in setup


@pytest.mark.slow
def test_report_is_deterministic(sweep, built, tmp_path):
    again = report.build_report(sweep.results_dir, sweep.sweep, out_dir=tmp_path / "again")
    first = report_dir(sweep.results_dir, sweep.sweep)
    for name in ("summary.csv", "paired.csv", "sanity.csv", "runs.csv", "figures/train_loss.png"):
        assert (first / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    md = again["md"].read_text(encoding="utf-8")
    # a report embeds the sharpness section of its own folder only: a report of sweep `foo` once embedded the
    # default sweep's section from results/report/
    assert "## Sharpness" not in md
    assert again["html"].read_text(encoding="utf-8").count("data:image/png;base64,") == 6
    first_md = (first / "REPORT.md").read_text(encoding="utf-8")
    assert "## Sharpness of the final checkpoints" in first_md
    assert md == first_md[: first_md.index("## Sharpness")].rstrip() + "\n"


def test_sanity_failure_is_reported(frames):
    runs, curves = frames
    runs = runs.copy()
    mask = (runs["arm"] == "sam_last") & (runs["k"] == 1) & (runs["seed"] == 0)
    runs.loc[mask, "final.dev/f1"] = runs.loc[mask, "final.dev/f1"] + 0.5
    sanity = sanity_table(runs, curves)
    f1 = sanity[sanity["metric"] == "final.dev/f1"].iloc[0]
    assert f1["passed"] is False or f1["passed"] == False  # noqa: E712
    assert f1["max_abs_diff"] == pytest.approx(0.5)
    paired = paired_table(runs)
    text = answer(runs, paired, sanity, target_summary(time_to_target(curves, runs)))["sanity"]
    assert "**Sanity check (k = 1): FAILED** on final.dev/f1 (sam_last)" in text


@pytest.mark.slow
def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert report.main([f"results_dir={tmp_path}", "sweep=nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sweep folder" in err
    assert report.main(["bogus=1"]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    assert report.main(["results_dir"]) == 2
    assert "key=value" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, "-m", "analysis.report", f"results_dir={tmp_path}", "sweep=nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error:")


# ---------------------------------------------------------------------------------------------------------------------
# notebook


def test_notebook_is_stored_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is None and c.outputs == [] for c in code)
    assert any("SAM_RESULTS_DIR" in c.source for c in code)


def _executed_outputs(results_dir, sweep_name, out):
    from analysis import notebook

    nb = notebook.execute(results_dir, sweep_name, out)  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(
        str(o.get("text", ""))
        + str(o.get("data", {}).get("text/plain", ""))
        + str(o.get("data", {}).get("text/markdown", ""))
        for o in outputs
    )
    return outputs, text


@pytest.mark.slow
def test_notebook_executes_against_the_synthetic_sweep(sweep, tmp_path):
    outputs, text = _executed_outputs(sweep.results_dir, sweep.sweep, tmp_path / "executed.ipynb")
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6
    assert f"sweep '{sweep.sweep}'" in text and "24 runs" in text and "read from run directories" in text
    assert "**Answer: yes.**" in text
    assert (tmp_path / "executed.ipynb").is_file()


@pytest.mark.slow
def test_notebook_runs_on_a_fresh_clone_from_the_report_csvs_alone(sweep, built, tmp_path):
    """A fresh clone has results/report/ (committed) but no results/runs/: the notebook reads the report's CSVs."""
    import shutil

    clone = tmp_path / "results"
    shutil.copytree(report_dir(sweep.results_dir, sweep.sweep), report_dir(clone, sweep.sweep))
    assert not (clone / "runs").exists()
    outputs, text = _executed_outputs(clone, sweep.sweep, tmp_path / "executed.ipynb")
    assert "read from the report's CSVs" in text and "24 runs" in text
    assert "**Answer: yes.**" in text  # the same answer as from the run directories
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 6


# ---------------------------------------------------------------------------------------------------------------------
# the real writer: run directories made by experiments.tracking.RunTracker read back by analysis.collect


def test_collect_reads_run_directories_written_by_the_tracker(tmp_path, monkeypatch):
    tracking = pytest.importorskip("experiments.tracking")
    from experiments.config import load_config
    from experiments.rundir import run_dir

    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    made = {}
    for arm, replay, status in (("sam_full", "full", "completed"), ("sam_last", "last", "diverged")):
        cfg = load_config(
            [],
            [
                f"arm={arm}",
                f"optim.replay={replay}",
                "train.accumulation_steps=4",
                "seed=3",
                "sweep=real",
                f"results_dir={tmp_path}",
                "tracking.mode=disabled",
            ],
        )
        with tracking.RunTracker(cfg, run_dir(cfg)) as tracker:
            tracker.log({"train/loss": 2.5, "train/step_time": 0.7}, update=1, epoch=0.5, examples=32)
            if status == "completed":
                tracker.log(
                    {"dev/loss": 1.9, "dev/em": 40.0, "dev/f1": 52.5, "eval/kind": "final"},
                    update=2,
                    epoch=1.0,
                    examples=64,
                )
                tracker.finish(
                    "completed",
                    final={
                        "dev/loss": 1.9,
                        "dev/em": 40.0,
                        "dev/f1": 52.5,
                        "train/loss": 2.1,
                        "update": 2,
                        "epoch": 1.0,
                    },
                    updates=2,
                    examples=64,
                    mean_step_time_s=0.7,
                )
            else:
                tracker.log({"train/loss": float("nan")}, update=2, epoch=1.0, examples=64)
                tracker.finish("diverged", "non-finite loss at update 2", updates=2)
        made[arm] = run_dir(cfg).name
    runs = collect_runs(tmp_path, "real")
    assert list(runs["run_id"]) == [made["sam_full"], made["sam_last"]]
    full, last = runs.iloc[0], runs.iloc[1]
    assert (full["arm"], full["k"], full["seed"], full["optim.replay"]) == ("sam_full", 4, 3, "full")
    assert full["status"] == "completed" and full["final.dev/f1"] == 52.5 and full["mean_step_time_s"] == 0.7
    assert full["model.name_or_path"] == "embedded" and full["optim.rho"] == 0.05
    assert isinstance(full["git_sha"], (str, type(None))) and isinstance(full["device"], str)
    assert (last["status"], last["reason"]) == ("diverged", "non-finite loss at update 2")
    curves = collect_curves(tmp_path, "real", runs)
    final = curves[(curves["run_id"] == made["sam_full"]) & (curves["eval_kind"] == "final")]
    assert dict(zip(final["metric"], final["value"])) == {"dev/loss": 1.9, "dev/em": 40.0, "dev/f1": 52.5}
    nan_loss = curves[(curves["run_id"] == made["sam_last"]) & (curves["metric"] == "train/loss")]["value"]
    assert math.isnan(nan_loss.iloc[-1])


@pytest.mark.slow
def test_report_of_sparse_sweeps(tmp_path):
    # one seed per cell, no k=1, no adamw: tables with n=1 (no CI), no paired CI, sanity not checked
    make_sweep(tmp_path, "tiny", arms=("sam_full", "sam_last"), ks=(4,), seeds=(0,), special=False, manifest=False)
    md = report.build_report(tmp_path, "tiny", out_dir=tmp_path / "tiny")["md"].read_text(encoding="utf-8")
    assert "| sam_full | 4 | 1 | 1 | " in md and "too few seeds for a test" in md
    assert "Not checked: the sweep has no seed with completed sam_full and sam_last runs at k = 1." in md
    assert "None: every run completed." in md
    # every run failed: the cells are still in the tables, with n = 0, and nothing is claimed
    write_run(
        tmp_path / "runs" / "dead",
        "adamw",
        2,
        0,
        results_dir=str(tmp_path),
        sweep="dead",
        status="failed",
        reason="boom",
        stop_at=3,
    )
    written = report.build_report(tmp_path, "dead", out_dir=tmp_path / "dead")
    md = written["md"].read_text(encoding="utf-8")
    assert "No run completed (1 failed)" in md and "| adamw | 2 | 1 | 0 | – | [–, –] |" in md
    assert "| failed | boom |" in md
    assert "figure:train_loss" in written and "figure:final_scores" not in written
    assert "Final dev EM and F1: not drawn" in md


@pytest.mark.slow
def test_a_report_never_embeds_the_sharpness_section_of_another_sweep(tmp_path):
    # the leak once fixed: with no sharpness.md of its own, the report of sweep `foo` fell back to the default
    # sweep's results/report/sharpness.md and embedded the sharpness section of sweep `ablation`
    make_sweep(tmp_path, "foo", arms=("sam_full", "sam_last"), ks=(4,), seeds=(0,), special=False, manifest=False)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "sharpness.md").write_text(
        "# Sharpness of the ablation checkpoints\n\nlambda_max of sweep ablation: 123.456\n", encoding="utf-8"
    )
    assert report_dir(tmp_path, "foo") == tmp_path / "report-foo"
    written = report.build_report(tmp_path, "foo")
    assert written["md"].parent == tmp_path / "report-foo" and not (tmp_path / "report-foo" / "sharpness.md").exists()
    assert find_sharpness(tmp_path / "report-foo") is None
    for name in ("md", "html"):
        text = written[name].read_text(encoding="utf-8")
        assert "123.456" not in text and "ablation checkpoints" not in text
        # no sharpness.md of its own: the report has no sharpness section at all (it says nothing about one)
        assert "sharpness" not in text.lower()


@pytest.mark.slow
def test_report_shows_the_v2_breakdown_and_rouge_w_only_when_runs_logged_them(tmp_path):
    make_sweep(tmp_path, "v2", arms=("sam_full", "sam_last"), ks=(4,), seeds=(0,), special=False, manifest=False)
    md = report.build_report(tmp_path, "v2", out_dir=tmp_path / "plain")["md"].read_text(encoding="utf-8")
    assert "HasAns" not in md and "ROUGE-W" not in md
    # a SQuAD v2 run writes dev/has_ans_f1 and dev/no_ans_f1 into its final block (values made up here)
    made_up = {"sam_full": (71.25, 40.5), "sam_last": (60.0, 12.75)}
    for path in (tmp_path / "runs" / "v2").glob("*/summary.json"):
        s = json.loads(path.read_text())
        s["final"]["dev/has_ans_f1"], s["final"]["dev/no_ans_f1"] = made_up[s["arm"]]
        path.write_text(json.dumps(s))
    md = report.build_report(tmp_path, "v2", out_dir=tmp_path / "v2")["md"].read_text(encoding="utf-8")
    has_ans = md.split("### Final dev F1, questions with an answer (HasAns) (higher is better)")[1].split("###")[0]
    assert "| sam_full | 4 | 1 | 1 | 71.25 |" in has_ans and "| sam_last | 4 | 1 | 1 | 60.00 |" in has_ans
    no_ans = md.split("### Final dev F1, questions without an answer (NoAns) (higher is better)")[1].split("##")[0]
    assert "| sam_full | 4 | 1 | 1 | 40.50 |" in no_ans and "| sam_last | 4 | 1 | 1 | 12.75 |" in no_ans
    assert "ROUGE-W" not in md


# ---------------------------------------------------------------------------------------------------------------------
# the answer first, updates-to-target, figures that stay inside the metric's range


@pytest.mark.slow
def test_report_writes_the_headline_and_the_time_to_target_table(sweep, built):
    out = report_dir(sweep.results_dir, sweep.sweep)
    headline = (out / "headline.md").read_text(encoding="utf-8")
    md = (out / "REPORT.md").read_text(encoding="utf-8")
    assert headline.startswith("## The answer\n") and headline.strip() in md
    table = pd.read_csv(out / "time_to_target.csv")
    assert list(table.columns) == [
        "arm",
        "k",
        "seed",
        "target_metric",
        "target",
        "update",
        "examples",
        "seconds",
        "reached",
    ]
    assert set(table["target"]) == {50.0, 80.0, 90.0}  # analysis.targets.DEFAULT_TARGETS: no report block here
    assert (out / "figures" / "time_to_target.png").is_file()


def _curve_frame(values_by_arm: dict, k: int = 1) -> pd.DataFrame:
    rows = []
    for arm, values in values_by_arm.items():
        for seed in (0, 1):
            for update, value in enumerate(values, start=1):
                for metric in ("dev/f1", "dev/loss"):
                    v = value if metric == "dev/f1" else 5.0 - value / 25
                    rows.append(
                        {
                            "run_id": f"{arm}-{seed}",
                            "arm": arm,
                            "replay": None,
                            "k": k,
                            "seed": seed,
                            "update": update * 4,
                            "epoch": 0.0,
                            "examples": update * 32,
                            "time": float(update),
                            "eval_kind": "periodic",
                            "metric": metric,
                            "value": v + seed * 0.5,
                        }
                    )
    return pd.DataFrame(rows)


def test_identical_arms_at_k1_are_one_line_and_axes_stay_inside_the_metric_range():
    same = [0.0, 40.0, 99.9]
    curves = _curve_frame({"adamw": [10.0, 60.0, 100.0], "sam_full": same, "sam_last": same, "sam_micro": same})
    assert plots.identical_arm_groups(
        curves[curves["metric"] == "dev/f1"], ["adamw", "sam_full", "sam_last", "sam_micro"], "update"
    ) == [["adamw"], ["sam_full", "sam_last", "sam_micro"]]
    fig = plots.figure_dev_curves(curves)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "SAM, full replay = sam_last = sam_micro (identical runs at k = 1)" in labels and len(labels) == 2
    f1_ax, loss_ax = fig.axes[0], fig.axes[1]
    assert f1_ax.get_ylim()[0] >= 0.0 and f1_ax.get_ylim()[1] <= 100.5  # the band reaches 100.5 at seed 1
    assert loss_ax.get_ylim()[0] >= 0.0


def test_final_scores_draw_min_max_of_seeds_not_a_t_interval_below_zero():
    runs = pd.DataFrame(
        {
            "arm": ["adamw"] * 3,
            "k": [4] * 3,
            "seed": [0, 1, 2],
            "status": ["completed"] * 3,
            "final.dev/f1": [2.0, 3.0, 70.0],
            "final.dev/em": [1.0, 2.0, 60.0],
        }
    )
    fig = plots.figure_final_scores(runs)
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert low >= 0.0 and high <= 101.0
        # the drawn error bar spans the seeds, 2..70 (a 3-seed Student-t interval of F1 2, 3, 70 reaches far
        # below 0: mean 25 ± t_{0.975,2}·38.97/√3 = 25 ± 97)
        (bars,) = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
        ys = sorted(float(y) for segment in bars.get_segments() for _, y in segment)
        assert ys[0] == pytest.approx(1.0 if "exact" in ax.get_ylabel() else 2.0)
        assert ys[-1] == pytest.approx(60.0 if "exact" in ax.get_ylabel() else 70.0)
    assert figure_style.seed_range([2.0, 3.0, 70.0]) == (25.0, 2.0, 70.0)


def test_manifest_overrides_are_read_as_the_run_read_them():
    """A sweep manifest's `key=value` overrides are typed by the config schema, as train.py typed them: a string key
    keeps its text (YAML 1.1 would make 0777 the number 511), a number key gets its number."""
    from analysis.collect import _parse_overrides

    parsed = _parse_overrides(
        ["tracking.project=0777", "train.accumulation_steps=04", "tracking.tags=[on]", "seed=oops"]
    )
    assert parsed == {
        "tracking.project": "0777",
        "train.accumulation_steps": 4,
        "tracking.tags": ("on",),
        "seed": "oops",
    }


def test_the_answer_of_klue_runs_is_about_rouge_w():
    """data.metric=klue logs dev/rouge_w instead of dev/f1: the answer, its paired test and the headline use it."""
    rows = []
    for seed, (full, last) in enumerate([(70.0, 40.0), (72.0, 41.0), (69.0, 45.0)]):
        for arm, value in (("sam_full", full), ("sam_last", last)):
            rows.append(
                {
                    "run_id": f"{arm}-{seed}",
                    "arm": arm,
                    "k": 4,
                    "seed": seed,
                    "status": "completed",
                    "final.dev/rouge_w": value,
                    "final.dev/em": value - 10,
                    "final.dev/loss": 1.0,
                }
            )
    runs = pd.DataFrame(rows)
    assert primary_metric(runs) == "dev/rouge_w"
    paired = paired_table(runs)  # the default metrics follow the primary score (the notebook)
    assert list(paired["metric"].unique()) == ["final.dev/rouge_w", "final.dev/em", "final.dev/loss"]
    cells = target_summary(pd.DataFrame())
    parts = answer(runs, paired, sanity_table(runs, pd.DataFrame()), cells)
    # (70 − 40 + 72 − 41 + 69 − 45) / 3 = 28.33
    assert "dev ROUGE-W 70.3 ± 1.5 with sam_full" in parts["answer"] and "**+28.3 ROUGE-W**" in parts["answer"]
    assert "dev ROUGE-W" in headline_table(runs, cells)[0]


def test_paired_table_leaves_out_a_k_where_one_arm_has_no_run():
    """The default ablation has sam_micro only at k = 1: no 'sam_micro − sam_full at k = 8, n = 0' row (the committed
    report once had one). A cell whose runs exist but failed stays, with n = 0."""
    rows = []
    for k, arms in (
        (1, ("sam_full", "sam_last", "sam_micro")),
        (8, ("sam_full", "sam_last")),
        (4, ("sam_full", "sam_last")),
    ):
        for arm in arms:
            for seed in range(2):
                failed = k == 4 and arm == "sam_last"
                rows.append(
                    {
                        "run_id": f"{arm}-{k}-{seed}",
                        "arm": arm,
                        "k": k,
                        "seed": seed,
                        "status": "failed" if failed else "completed",
                        "final.dev/f1": float(seed + (arm == "sam_full")),
                        "final.dev/em": 1.0,
                        "final.dev/loss": 1.0,
                    }
                )
    paired = paired_table(pd.DataFrame(rows))
    f1 = paired[paired["metric"] == "final.dev/f1"]
    cells = {(r.a, r.b, int(r.k)): int(r.n) for r in f1.itertuples()}
    assert cells == {
        ("sam_full", "sam_last", 1): 2,
        ("sam_full", "sam_last", 4): 0,
        ("sam_full", "sam_last", 8): 2,
        ("sam_micro", "sam_full", 1): 2,
    }


def test_notebook_cli_names_itself_in_its_errors(capsys):
    from analysis import notebook

    assert notebook.main(["foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument 'foo' must look like key=value") and "python -m analysis.notebook" in err
    assert "analysis.report" not in err


def test_results_tables_cut_the_t_interval_to_the_metric_range():
    """F1 of 97.0, 99.0, 100.0: mean 98.67, s = 1.528, t₀.₉₇₅,₂ = 4.303 → 98.67 ± 3.79 = [94.87, 102.46]: shown as
    [94.87, 100.00]. Loss 0.05, 0.10, 0.30: mean 0.15, s = 0.1323 → 0.15 ± 0.3286 = [-0.1786, 0.4786]:
    [0.0000, 0.4786]."""
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "arm": ["adamw"] * 3,
            "k": [8] * 3,
            "seed": [0, 1, 2],
            "status": ["completed"] * 3,
            "final.dev/f1": [97.0, 99.0, 100.0],
            "final.dev/em": [97.0, 99.0, 100.0],
            "final.dev/loss": [0.05, 0.10, 0.30],
            "final.train/loss": [0.05, 0.10, 0.30],
        }
    )
    text = "\n".join(_results_section(summary_table(runs)))
    assert "| adamw | 8 | 3 | 3 | 98.67 ± 1.53 | [94.87, 100.00] |" in text
    assert "| adamw | 8 | 3 | 3 | 0.1500 ± 0.1323 | [0.0000, 0.4786] |" in text


@pytest.mark.slow
def test_the_headline_names_its_setup_its_floor_and_a_target_never_reached(tmp_path):
    """A hand-made sweep at k = 4 where sam_last never reaches dev F1 60 (final 58.2 ± 0.8; sam_full 64.2, at the
    final evaluation of its 12-update budget) and sam_last_only is in the grid: the headline says what was trained on
    (read from the configs, summaries and env.json), computes the no-training floor on the same dev set, says
    "never reached ... (0/3 seeds)" before the ratio bound, and answers for sam_full − sam_last_only."""
    from analysis.baseline import Floor, no_training_floor
    from analysis.report.text import answer, setup_text
    from experiments.config import load_config
    from experiments.data.baseline import heuristic_baseline
    from experiments.data.loading import load_examples

    arms = ("adamw", "sam_full", "sam_last", "sam_last_only")
    sweep = make_sweep(tmp_path, arms=arms, ks=(1, 4), special=False, report={"targets": {"dev/f1": [60]}})
    written = report.build_report(sweep.results_dir, sweep.sweep)
    text = written["headline"].read_text(encoding="utf-8")
    # the floor is computed on the sweep's own dev set: the heuristic on the dev set a run's config rebuilds
    cfg = load_config([sweep.runs[0].path / "config.yaml"])
    expected = heuristic_baseline(load_examples(cfg.data)[1])
    floor = no_training_floor(collect_runs(sweep.results_dir, sweep.sweep))
    assert (floor.score, floor.em, floor.dev_examples) == (expected["f1"], expected["exact_match"], 24)
    setup = next(line for line in text.splitlines() if line.startswith("**Setup.**"))
    for words in (
        "synthetic questions about 2-fact paragraphs",
        "96 train / 24 dev questions",
        "Model: `embedded`",
        "12 updates of 16 examples (4 × 4) at k = 4",
        f"Hardware: {DEVICE_NAME} (cpu, 2 threads)",
        f"scores **dev F1 {expected['f1']:.1f}** (EM {expected['exact_match']:.1f}) on the same 24 dev questions",
    ):
        assert words in setup, words
    answer_line = next(line for line in text.splitlines() if line.startswith("**Answer"))
    never = "sam_last **never reached it within the 12-update budget (0/3 seeds)**"
    assert never in answer_line and answer_line.index(never) < answer_line.index("more than 1.0×")
    trainer = next(line for line in text.splitlines() if line.startswith("**The public Trainer pattern"))
    diff = np.mean(
        [expected_final("sam_full", 4, s)["dev/f1"] - expected_final("sam_last_only", 4, s)["dev/f1"] for s in range(3)]
    )
    assert f"sam_full − sam_last_only = **{diff:+.1f} F1** [95% CI" in trainer and "paired t-test p = " in trainer
    assert "To reach dev F1 60" in trainer
    # the learning curves draw the floor
    assert written["figure:dev_curves"].is_file()
    fig = plots.figure_dev_curves(collect_curves(sweep.results_dir, sweep.sweep), baseline=floor.score)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert f"no-training heuristic ({floor.score:.1f})" in labels
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label().startswith("no-training")]
    assert lines and all(list(ln.get_ydata()) == [floor.score, floor.score] for ln in lines)

    # an arm that ends below the floor is named so; without run directories the floor says why it is missing
    runs = collect_runs(sweep.results_dir, sweep.sweep)
    curves = collect_curves(sweep.results_dir, sweep.sweep, runs)
    cells = target_summary(time_to_target(curves, runs, {"dev/f1": [60]}))
    high = Floor(em=55.0, score=60.0, metric="dev/f1", dev_examples=24, run_id="x")
    parts = answer(runs, paired_table(runs), sanity_table(runs, curves), cells, high)
    means = {a: np.mean([expected_final(a, 4, s)["dev/f1"] for s in range(3)]) for a in arms}
    below = [f"{a} ({v:.1f})" for a, v in means.items() if v < 60.0]
    assert below and means["sam_full"] > 60.0  # the made-up effect puts sam_last below 60
    verb = "ends" if len(below) == 1 else "end"
    names = below[0] if len(below) == 1 else ", ".join(below[:-1]) + " and " + below[-1]
    assert f"At k = 4, {names} {verb} **below the no-training floor** of dev F1 60.0" in parts["floor"]
    assert "not computed (no run directory with a config.yaml" in setup_text(
        runs.assign(run_dir=None), None, "no run directory with a config.yaml to rebuild the dev set from"
    )


def test_distinct_values_keep_large_floats_and_show_counts_as_ints():
    from analysis.report.formatting import distinct_values, join_values

    assert join_values(distinct_values(pd.Series([0.05, 1e30]))) == "0.05, 1e+30"
    assert join_values(distinct_values(pd.Series([128.0, None, 256.0, 128.0]))) == "128, 256"
    assert distinct_values(pd.Series([2.0**53])) == [2.0**53]  # no longer exactly a count: stays a float


def test_the_answer_says_sam_last_diverged_on_every_seed_instead_of_not_measured():
    """issue 21 item 9: a sweep whose buggy arm diverged on all 3 seeds at k = 8 (sam_full completed on all 3) has
    its answer: "sam_last diverged on 3/3 seeds", not "not measured"."""
    import pandas as pd

    from analysis.report.text import answer

    rows = [
        {"arm": arm, "k": 8, "seed": seed, "status": status, "final.dev/f1": f1}
        for seed in (0, 1, 2)
        for arm, status, f1 in (("sam_full", "completed", 80.0 + seed), ("sam_last", "diverged", float("nan")))
    ]
    runs = pd.DataFrame(rows)
    text = answer(runs, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())["answer"]
    assert text.startswith("**Answer: sam_last diverged on 3/3 seeds** at k = 8, where sam_full completed")
    # one seed of sam_last completed: no longer "diverged on every seed"; with no pair left, still "not measured"
    runs.loc[(runs["arm"] == "sam_last") & (runs["seed"] == 0), "status"] = "failed"
    assert answer(runs, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())["answer"].startswith(
        "**Answer: not measured.**"
    )


@pytest.mark.parametrize("value", ["../x", "a/b", ".", "/abs"])
def test_the_report_refuses_a_sweep_name_that_is_not_one_folder(value):
    """issue 21 item 5: sweep= names runs/<sweep>/ and report-<sweep>/, so it is one plain name (is_path_name)."""
    from analysis.report import ReportError, parse_args

    with pytest.raises(ReportError, match=r"must be one plain name of letters, digits, \. _ -"):
        parse_args([f"sweep={value}"])
    assert parse_args(["sweep=ablation"])["sweep"] == "ablation"


def test_shortcut_runs_are_left_out_of_the_step_times_and_their_cost_comes_from_pass_counts():
    """A bug arm that ran only with optim.replay_shortcut has no literal step time: the findings leave it out of the
    measured ratios and state its literal loop's cost from pass counts. Per update of N examples (experiments.passes):
    AdamW N, every literal SAM loop 2N, so 2N / N = 2.00× for sam_last and sam_last_only at k = 8."""
    from analysis.report.text import findings

    rows = [  # arm, replay, k, seed, literal step time, ran with the shortcut
        ("adamw", "none", 8, 0, 1.0, False),
        ("sam_full", "full", 8, 0, 2.5, False),
        ("sam_last", "last", 8, 0, 1.4, True),  # the shortcut's time: must not become a "0.56×" ratio
        ("sam_last_only", "last_only", 8, 0, 0.7, True),
    ]
    runs = pd.DataFrame(
        [
            {
                "arm": a,
                "replay": r,
                "k": k,
                "seed": s,
                "status": "completed",
                "mean_step_time_s": t,
                "literal_cost": not sc,
            }
            for a, r, k, s, t, sc in rows
        ]
    )
    paired = pd.DataFrame(columns=["a", "b", "metric", "k", "n", "mean_diff"])
    curves = pd.DataFrame(columns=["metric", "k", "value"])
    text = " ".join(findings(runs, curves, paired))
    assert "At k=8 an update takes 1 s with AdamW; relative to that: sam_full 2.50×." in text
    assert (
        "At k=8, sam_last, sam_last_only ran with optim.replay_shortcut=true (their wasted passes skipped), so their "
        "step times are not their loops' cost and are left out; by pass count (experiments/passes.py) their literal "
        "loops cost, relative to AdamW: sam_last 2.00×, sam_last_only 2.00×." in text
    )
    timed = runs.assign(literal_cost=True)  # the same runs timed literally: no pass-count sentence
    text = " ".join(findings(timed, curves, paired))
    assert "replay_shortcut" not in text and "sam_last 1.40×" in text


def test_the_step_time_caption_says_shortcut_runs_are_left_out_only_when_there_were_some(tmp_path):
    from analysis.report.sections import SHORTCUT_NOTE, _figures_section

    path = tmp_path / "figures" / "step_time.png"
    with_note = "\n".join(_figures_section({"step_time": path}, tmp_path, shortcut_runs=True))
    without = "\n".join(_figures_section({"step_time": path}, tmp_path, shortcut_runs=False))
    assert SHORTCUT_NOTE.strip() in with_note and "replay_shortcut" not in without
