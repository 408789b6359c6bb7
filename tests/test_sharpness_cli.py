"""The sharpness CLI (`python -m analysis.sharpness results_dir=DIR sweep=NAME ...`) on a tiny real sweep.

A module fixture trains 6 tiny runs with the real trainer (adamw, sam_full, sam_last × seeds 0, 1; tiny random BERT,
3 updates each), then the CLI measures them with tiny budgets. Checked: one csv row per run with finite measures and
pass counts; the markdown section (heading, per-arm table, paired differences, Kendall τ with its caveat); every
figure a non-blank PNG; the same numbers on a second call in 2 worker processes; the run directories byte-for-byte
unchanged; one-line errors with exit status 2 for a bad key, a bad value, a sweep without completed runs and runs with
different data. Kendall's tau-b is checked against scipy.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.sharpness.cli import main
from analysis.sharpness.figures import FIGURES
from analysis.sharpness.options import SharpnessError, parse_args
from analysis.sharpness.qa import check_same_data
from analysis.sharpness.section import build_markdown
from analysis.sharpness.tables import MARK, summary_tables, tau_table, tau_verdict, usable_frame
from analysis.stats import kendall_tau_b, kendall_with_ci
from experiments.rundir import report_dir
from tests.conftest import PYTHON, REPO, SMOKE, arm_file

ARMS = ("adamw", "sam_full", "sam_last")
SEEDS = (0, 1)
TINY_BUDGET = [
    "train_examples=8",
    "dev_examples=8",
    "landscape_examples=4",
    "hessian_examples=4",
    "eigen_iters=3",
    "trace_samples=2",
    "average_samples=2",
    "worst_steps=2",
    "curve_points=5",
    "curve_directions=2",
    "surface_points=4",
    "interp_points=3",
    "threads=1",
]
MEASURES = [
    "train_loss",
    "dev_loss",
    "gap_subset",
    "lambda_max",
    "trace",
    "trace_se",
    *(f"avg_sharpness_rho{r}" for r in ("0.01", "0.05", "0.1")),
    *(f"worst_sharpness_rho{r}" for r in ("0.01", "0.05", "0.1")),
]


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under the sweep's run directories."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "runs").rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """6 completed tiny runs under <root>/runs/tiny/, measured once by the CLI (a second call is a test)."""
    from experiments.train import main as train

    root = tmp_path_factory.mktemp("sharpness")
    for arm in ARMS:
        for seed in SEEDS:
            code = train(
                [
                    SMOKE,
                    arm_file(arm),
                    f"results_dir={root}",
                    "sweep=tiny",
                    "data.generated.n_train=16",
                    "data.generated.n_dev=8",
                    "train.max_updates=3",
                    "train.epochs=1",
                    "tracking.mode=disabled",
                    f"seed={seed}",
                ]
            )
            assert code == 0
    before = _snapshot(root)
    assert any(name.endswith(".safetensors") for name in before)
    code = main([f"results_dir={root}", "sweep=tiny", *TINY_BUDGET])
    assert code == 0
    report = report_dir(root, "tiny")
    return {
        "root": root,
        "before": before,
        "csv": (report / "sharpness.csv").read_text(),
        "curves": (report / "sharpness_curves.csv").read_text(),
        "md": (report / "sharpness.md").read_text(),
    }


@pytest.mark.slow
def test_csv_has_one_row_per_run_with_finite_measures_and_pass_counts(sweep):
    frame = pd.read_csv(report_dir(sweep["root"], "tiny") / "sharpness.csv")
    run_ids = sorted(p.name for p in (sweep["root"] / "runs" / "tiny").iterdir())
    assert sorted(frame["run_id"]) == run_ids
    assert sorted(zip(frame["arm"], frame["seed"])) == sorted((a, s) for a in ARMS for s in SEEDS)
    assert set(frame["k"]) == {2}  # configs/smoke.yaml accumulates 2 micro-batches
    for column in MEASURES:
        assert np.isfinite(frame[column].to_numpy(dtype=float)).all(), column
    for column in ("forward", "backward", "hvp"):
        assert (frame[column] > 0).all(), column
    # every lambda_max says whether it converged: its verified residual against eigen_tol, with its products counted
    assert frame["lambda_max_converged"].dtype == bool
    assert (frame["lambda_max_converged"] == (frame["lambda_max_residual"] <= 1e-3)).all()
    assert ((frame["lambda_max_iters"] >= 1) & (frame["lambda_max_iters"] <= 3)).all()
    assert (frame["lambda_max_hvp"] == frame["lambda_max_iters"] + 1).all()
    assert (frame["trace_probes"] == 2).all()
    assert (frame["trace_reliable"] == (frame["trace_se"] <= 0.5 * frame["trace"].abs())).all()
    # the gaps are what they say
    np.testing.assert_allclose(frame["gap_subset"], frame["dev_loss"] - frame["train_loss"])
    np.testing.assert_allclose(frame["gap_summary"], frame["summary_dev_loss"] - frame["summary_train_loss"])
    # one 2D surface per arm (seed 0), and the interpolation pairs of every seed
    curves = pd.read_csv(report_dir(sweep["root"], "tiny") / "sharpness_curves.csv")
    surf = curves[curves["kind"] == "surface_2d"]
    assert sorted(surf["arm"].unique()) == sorted(ARMS) and set(surf["seed"]) == {0}
    assert len(surf) == 3 * 4 * 4
    interp = curves[curves["kind"] == "interp_train"]
    assert sorted(interp["arm"].unique()) == ["adamw -> sam_full", "sam_full -> sam_last"]
    assert len(interp) == 2 * len(SEEDS) * 3


@pytest.mark.slow
def test_markdown_section_has_setup_tables_differences_and_kendall_tau_with_caveat(sweep):
    md = sweep["md"]
    assert md.startswith("## Loss-landscape sharpness\n")
    assert "### Setup" in md and "Budget" in md and "normalisation" in md
    assert "| measure | k | adamw | sam_full | sam_last |" in md  # the per-arm table
    assert "sam_full − adamw" in md and "sam_full − sam_last" in md  # the paired differences
    tau_lines = [line for line in md.splitlines() if "Kendall τ" in line]
    assert tau_lines
    assert "Dinh et al. 2017" in md and "Andriushchenko et al. 2023" in md
    assert "uninformative" in md  # 6 runs: fewer than the 10 a tau needs
    images = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert sorted(images) == sorted(f"figures/{name}" for name in FIGURES.values())


@pytest.mark.slow
def test_every_figure_is_a_non_blank_png(sweep):
    import matplotlib.image as mpimg

    for name in FIGURES.values():
        path = report_dir(sweep["root"], "tiny") / "figures" / name
        assert path.is_file(), name
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and float(pixels.var()) > 0, name


@pytest.mark.slow
def test_same_seed_gives_the_same_numbers_in_two_worker_processes_and_the_runs_stay_untouched(sweep, capsys):
    # the second call writes into out= (as `make report` does for sweeps other than the default one), and measures
    # in 2 worker processes of 1 thread each: the same bits as the first call's one process of 1 thread
    report = sweep["root"] / "report-again"
    code = main([f"results_dir={sweep['root']}", "sweep=tiny", f"out={report}", *TINY_BUDGET, "jobs=2"])
    assert code == 0
    assert "1 thread in each of 2 worker processes" in capsys.readouterr().out
    assert (report / "figures").is_dir()
    assert (report / "sharpness.csv").read_text() == sweep["csv"]
    assert (report / "sharpness_curves.csv").read_text() == sweep["curves"]
    assert (report / "sharpness.md").read_text() == sweep["md"]
    assert _snapshot(sweep["root"]) == sweep["before"]  # checkpoints, configs, summaries: not a byte changed


@pytest.mark.parametrize(
    "args, message",
    [
        (["bogus_key=1"], "unknown key 'bogus_key'"),
        (["eigen_iters=-1"], "eigen_iters=-1 is out of range"),
        (["rhos_worst=[]"], "rhos_worst"),
        (["curve_points=many"], "curve_points"),
        (["hessian_examples=64"], "hessian_examples=64 must be <= train_examples"),
        (["novalue"], "must look like key=value"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_exit_2(tmp_path, capsys, args, message):
    assert main([f"results_dir={tmp_path}", "sweep=tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_arguments_are_typed_by_the_key_not_by_yaml_1_1():
    """max_runs=010 is ten (YAML 1.1: octal 8), out=0123 is the folder 0123 (YAML 1.1: 83), lists are read as lists."""
    opts = parse_args(["max_runs=010", "out=0123", "sweep=1.10", "rhos_worst=[0.1, 0.01]", "dry_run=yes", "threads="])
    assert (opts.max_runs, opts.out, opts.sweep, opts.rhos_worst) == (10, "0123", "1.10", [0.01, 0.1])
    assert opts.dry_run is True and opts.threads is None


def test_module_entry_point_reports_a_bad_key_in_one_line(tmp_path):
    proc = subprocess.run(
        [PYTHON, "-m", "analysis.sharpness", f"results_dir={tmp_path}", "sweep=x", "nope=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown key 'nope'" in proc.stderr


def test_a_sweep_without_completed_runs_is_a_one_line_error(tmp_path, capsys):
    assert main([f"results_dir={tmp_path}", "sweep=missing"]) == 2
    assert "no sweep folder" in capsys.readouterr().err
    run = tmp_path / "runs" / "broken" / "sam_full-k2-s0-abc"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "failed", "reason": "boom"}))
    assert main([f"results_dir={tmp_path}", "sweep=broken"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no completed run" in err and "status failed" in err
    assert not report_dir(tmp_path, "broken").exists() and not (tmp_path / "report").exists()


def test_runs_with_different_data_are_refused():
    from experiments.config import load_config

    a = load_config([SMOKE])
    b = load_config([SMOKE], ["data.max_seq_length=96"])
    check_same_data({"a": a, "b": load_config([SMOKE], ["seed=3", "optim.rho=0.1"])})  # other keys may differ
    with pytest.raises(SharpnessError, match="data.max_seq_length=96 in b"):
        check_same_data({"a": a, "b": b})


@pytest.mark.parametrize(
    "x, y",
    [
        ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
        ([1, 1, 2, 3, 3, 4], [0.5, 0.7, 0.7, 0.1, 2.0, 2.0]),  # ties in both
        ([3, 1, 2], [1, 2, 3]),
    ],
)
def test_kendall_tau_b_matches_scipy(x, y):
    from scipy.stats import kendalltau

    assert kendall_tau_b(x, y) == pytest.approx(kendalltau(x, y, variant="b").statistic)


def test_kendall_interval_and_verdict():
    rng = np.random.default_rng(0)
    x = np.arange(30.0)
    result = kendall_with_ci(x, x + rng.normal(0, 1, 30))
    assert result["n"] == 30 and result["ci_low"] <= result["tau"] <= result["ci_high"] and result["ci_low"] > 0.5
    assert tau_verdict(result) == "CI excludes 0"
    small = kendall_with_ci([1, 2, 3, 4], [1, 2, 3, 4])
    assert small["tau"] == 1.0 and tau_verdict(small).startswith("uninformative (n = 4 < 10")
    constant = kendall_with_ci([1, 1, 1], [1, 2, 3])
    assert math.isnan(constant["tau"]) and tau_verdict(constant).startswith("undefined")
    assert kendall_with_ci([1, float("nan"), 3], [1, 2, 3])["n"] == 2  # missing values are dropped


def test_defaults_and_help_list_every_key(capsys):
    opts = parse_args([])
    assert opts.hessian_examples <= opts.landscape_examples <= opts.train_examples
    assert len(opts.rhos_worst) >= 3 and len(opts.rhos_average) >= 3
    assert main(["help"]) == 0
    out = capsys.readouterr().out
    for key in (
        "results_dir",
        "sweep",
        "train_examples",
        "dev_examples",
        "eigen_iters",
        "trace_samples",
        "rhos_worst",
        "rhos_average",
        "average_samples",
        "worst_steps",
        "curve_points",
        "curve_directions",
        "surface_points",
        "interp_points",
        "seed",
        "threads",
        "max_runs",
    ):
        assert f"  {key}=" in out


@pytest.mark.slow
def test_dry_run_prints_the_estimate_and_writes_nothing(sweep, capsys):
    report = report_dir(sweep["root"], "tiny")
    stamp = (report / "sharpness.csv").stat().st_mtime_ns
    assert main([f"results_dir={sweep['root']}", "sweep=tiny", "dry_run=true", *TINY_BUDGET]) == 0
    out = capsys.readouterr().out
    assert "timing probe:" in out and "estimated time:" in out and "[1/6]" not in out
    assert (report / "sharpness.csv").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_every_measure_of_sharpness_csv_is_a_row_of_the_metric_table(sweep):
    """The sharpness package writes a column for every sharpness, loss and gap row of experiments.metrics (one per
    radius for the per-ρ measures), and every column its tables read has a row (label, words, direction)."""
    from analysis.sharpness.options import parse_args as sharpness_args
    from analysis.sharpness.tables import LOSS_COLUMNS, measure_columns
    from experiments.metrics import keyed, lookup, select

    frame = pd.read_csv(report_dir(sweep["root"], "tiny") / "sharpness.csv")
    opts = sharpness_args([f"results_dir={sweep['root']}", "sweep=tiny", *TINY_BUDGET])
    rhos = {"avg_sharpness_rho{rho}": opts.rhos_average, "worst_sharpness_rho{rho}": opts.rhos_worst}
    expected = [keyed(m.key, r) for m in select("sharpness") if m.key in rhos for r in rhos[m.key]]
    expected += [m.key for m in select("sharpness") if m.key not in rhos]
    assert set(expected) <= set(frame.columns), sorted(set(expected) - set(frame.columns))
    read = [c for c, _ in measure_columns(opts) + LOSS_COLUMNS]
    assert set(read) == set(expected)
    assert all(lookup(c) is not None and lookup(c).source == "sharpness" for c in read)


def test_sharpness_verdicts_read_flatter_or_sharper_never_better():
    """Hand-made sharpness values: sam_full has the smaller λmax, trace and adaptive sharpness on every seed (by
    1, 2, 4: a paired t p = 0.035 when the spread is 1, 2, 3 around 2, see tests/test_stats.py) and the smaller
    gap; the verdict says "sam_full flatter" and "smaller gap", never "better"."""
    from analysis.sharpness.options import SharpnessConfig
    from analysis.sharpness.tables import LOSS_COLUMNS, measure_columns, summary_tables

    opts = SharpnessConfig(rhos_average=(0.05,), rhos_worst=(0.05,))
    rows = []
    for seed, d in zip(range(3), (2.0, 3.0, 4.0)):  # a − b = −2, −3, −4: p = 1 − 3√3/√29 = 0.035
        for arm, shift in (("sam_full", -d), ("adamw", 0.0)):
            row = {"run_id": f"{arm}-{seed}", "arm": arm, "k": 8, "seed": seed}
            for column, _ in measure_columns(opts):
                row[column] = 10.0 + shift
            for column, _ in LOSS_COLUMNS:
                row[column] = 1.0 + shift / 10
            rows.append(row)
    _, paired = summary_tables(pd.DataFrame(rows), opts)
    paired = paired[(paired["a"] == "sam_full") & (paired["b"] == "adamw")].set_index("metric")
    for column, label in measure_columns(opts):
        assert paired.loc[column, "p_value"] == pytest.approx(1 - 3 * math.sqrt(3) / math.sqrt(29), rel=1e-9)
        assert paired.loc[column, "verdict"] == f"sam_full flatter ({label}, p = 0.035) (n=3: low power)"
        assert paired.loc[column, "ci_high"] < 0  # the t-interval agrees with the test
    assert paired.loc["gap_subset", "verdict"].startswith("sam_full smaller gap")
    assert not any("better" in v or "worse" in v for v in paired["verdict"])


def _hand_made_frame():
    """12 runs: adamw and sam_full at k = 8, seeds 0-5; sam_full flatter by lambda_max on every seed. Seed 1's
    sam_full lambda_max is huge but unconverged (a budget of 2 products), adamw's trace of seed 2 too noisy."""
    rows = []
    for arm, base in (("adamw", 10.0), ("sam_full", 5.0)):
        for seed in range(6):
            rows.append(
                {
                    "run_id": f"{arm}-k8-s{seed}",
                    "arm": arm,
                    "k": 8,
                    "seed": seed,
                    "lambda_max": base + seed,
                    "lambda_max_converged": True,
                    "trace": 100 * base + seed,
                    "trace_se": 1.0,
                    "trace_reliable": True,
                    "gap_subset": 0.1 * seed + (0.05 if arm == "adamw" else 0.0),
                    "gap_summary": 0.2 * seed,
                    "train_loss": 0.1,
                    "dev_loss": 0.2,
                }
            )
    frame = pd.DataFrame(rows)
    bad = (frame["arm"] == "sam_full") & (frame["seed"] == 1)
    frame.loc[bad, ["lambda_max", "lambda_max_converged"]] = [1e6, False]
    noisy = (frame["arm"] == "adamw") & (frame["seed"] == 2)
    frame.loc[noisy, ["trace", "trace_se", "trace_reliable"]] = [-5000.0, 9000.0, False]
    frame["summary_dev_loss"] = frame["summary_train_loss"] = 0.0
    return frame


@pytest.mark.slow
def test_unconverged_lambda_max_and_noisy_trace_are_marked_and_left_out_of_means_verdicts_and_tau():
    opts = parse_args(["results_dir=x", "sweep=y", "rhos_worst=[0.1]", "rhos_average=[0.1]"])
    frame = _hand_made_frame()
    frame["avg_sharpness_rho0.1"] = frame["worst_sharpness_rho0.1"] = frame["lambda_max"].where(frame["seed"] != 1, 6)
    summary, paired = summary_tables(frame, opts)
    lam = summary[(summary["metric"] == "lambda_max") & (summary["arm"] == "sam_full")].iloc[0]
    assert lam["n"] == 5 and lam["left_out"] == 1
    assert lam["mean"] == pytest.approx(np.mean([5, 7, 8, 9, 10]))  # without the unconverged 1e6
    tr = summary[(summary["metric"] == "trace") & (summary["arm"] == "adamw")].iloc[0]
    assert tr["n"] == 5 and tr["left_out"] == 1 and tr["mean"] == pytest.approx(np.mean([1000, 1001, 1003, 1004, 1005]))
    # the paired verdict: 5 pairs (seed 1 lost its pair), sam_full − adamw = −5 on each of them
    row = paired[(paired["metric"] == "lambda_max") & (paired["a"] == "sam_full") & (paired["b"] == "adamw")].iloc[0]
    assert row["n"] == 5 and row["left_out"] == 1 and row["pairs"] == "0,2,3,4,5"
    assert row["mean_diff"] == pytest.approx(-5.0)
    # Kendall tau over the 11 usable runs: the unconverged run is not in it
    taus = tau_table(frame, opts)
    t = taus[(taus["measure"] == "lambda_max") & (taus["gap"] == "gap_subset")].iloc[0]
    usable = frame.drop(frame.index[(frame["arm"] == "sam_full") & (frame["seed"] == 1)])
    assert t["n"] == 11 and t["left_out"] == 1
    assert t["tau"] == pytest.approx(kendall_tau_b(usable["lambda_max"], usable["gap_subset"]))
    assert usable_frame(frame)["lambda_max"].isna().sum() == 1
    # the section says how many converged and marks the left-out values in every table
    run = [type("Run", (), {"run_id": r})() for r in frame["run_id"]]
    result = {
        "opts": opts,
        "runs": run,
        "skipped": [],
        "interp": [],
        "plans": {r.run_id: {"forward_landscape": 1, "hvp": 7} for r in run},
        "plan": type("Plan", (), {"hessian": set(frame["run_id"]), "surface": {}})(),
        "data": type(
            "Data",
            (),
            {k: {"x": np.zeros((4, 1))} for k in ("train", "dev", "landscape", "landscape_dev", "hessian")}
            | {"train_total": 9, "dev_total": 9},
        )(),
    }
    frame["hessian_measured"] = True
    frame["lambda_max_iters"] = 5
    frame["lambda_max_residual"] = np.where(frame["lambda_max_converged"], 1e-4, 0.3)
    frame["forward"] = frame["backward"] = frame["hvp"] = 1
    md = build_markdown(result, frame, summary, paired, taus, {})
    assert f"λmax converged in 11 of 12 runs; the others are marked {MARK} and left out" in md
    assert f"tr(H) precise enough in 11 of 12 runs; the others are marked {MARK}" in md
    assert f"(n=5; 1 {MARK} left out)" in md  # per-arm table
    assert f"5 (1 {MARK} left out)" in md  # paired table
    assert f"11 (1 {MARK} left out)" in md  # tau table
    assert "1e+06" not in md  # the unconverged value reaches no table


def test_the_hessian_figure_marks_left_out_values():
    from analysis.sharpness.figures import figure_hessian

    fig = figure_hessian(_hand_made_frame())
    ax_lambda, ax_trace = fig.axes[:2]
    assert MARK in ax_lambda.get_title() and "1 of 12" in ax_lambda.get_title()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(MARK in label and "left out" in label for label in labels)
    # the one hollow marker sits at the unconverged value; the 11 filled dots are the converged runs
    from matplotlib.collections import PathCollection

    dots = [c for c in ax_lambda.collections if isinstance(c, PathCollection)]
    hollow = [c for c in dots if c.get_facecolors().size == 0]
    assert [float(y) for c in hollow for _, y in c.get_offsets()] == [1e6]
    filled = sorted(float(y) for c in dots if c.get_facecolors().size for _, y in c.get_offsets())
    assert 1e6 not in filled and len(filled) == 11


@pytest.mark.parametrize(
    "arg, message",
    [
        ("curve_span=inf", "curve_span=inf is out of range; it must be > 0"),
        ("eigen_tol=nan", "eigen_tol=nan is out of range; it must be > 0"),
        ("worst_step_size=inf", "worst_step_size=inf is out of range; it must be > 0 or null"),
        ("sweep=../x", "sweep='../x' must be one plain name of letters, digits, . _ - (not . or ..)"),
    ],
)
def test_non_finite_values_and_path_escapes_are_refused(arg, message):
    """issue 21 items 1 and 5 in analysis.sharpness's own options: inf passes `> 0`, and sweep is a folder name."""
    with pytest.raises(SharpnessError) as info:
        parse_args([arg])
    assert str(info.value) == message
