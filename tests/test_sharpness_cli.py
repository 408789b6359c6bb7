"""The sharpness CLI (`python -m analysis.sharpness results_dir=DIR sweep=NAME ...`) on a tiny real sweep.

A module fixture trains 6 tiny runs with the real trainer (adamw, sam_full, sam_last × seeds 0, 1; tiny random BERT,
3 updates each), then the CLI measures them with tiny budgets. Checked: one csv row per run with finite measures and
pass counts; the markdown section (heading, per-arm table, paired differences, Kendall τ with its caveat); every
figure a non-blank PNG; the same numbers on a second call; the run directories byte-for-byte unchanged; one-line
errors with exit status 2 for a bad key, a bad value, a sweep without completed runs and runs with different data.
Kendall's tau-b is checked against scipy.
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
from analysis.sharpness.tables import tau_verdict
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
    # a negative first power-iteration estimate is rerun with the shift, which can only raise it to lambda_max
    shifted = frame[frame["lambda_max_shifted"]]
    assert (shifted["lambda_max"] > shifted["lambda_max_first"]).all()
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


def test_every_figure_is_a_non_blank_png(sweep):
    import matplotlib.image as mpimg

    for name in FIGURES.values():
        path = report_dir(sweep["root"], "tiny") / "figures" / name
        assert path.is_file(), name
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and float(pixels.var()) > 0, name


def test_same_seed_gives_the_same_numbers_and_the_runs_stay_untouched(sweep):
    # the second call writes into out= (as `make report` does for sweeps other than the default one)
    report = sweep["root"] / "report-again"
    code = main([f"results_dir={sweep['root']}", "sweep=tiny", f"out={report}", *TINY_BUDGET])
    assert code == 0
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


def test_dry_run_prints_the_estimate_and_writes_nothing(sweep, capsys):
    report = report_dir(sweep["root"], "tiny")
    stamp = (report / "sharpness.csv").stat().st_mtime_ns
    assert main([f"results_dir={sweep['root']}", "sweep=tiny", "dry_run=true", *TINY_BUDGET]) == 0
    out = capsys.readouterr().out
    assert "timing probe:" in out and "estimated time:" in out and "[1/6]" not in out
    assert (report / "sharpness.csv").stat().st_mtime_ns == stamp


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
