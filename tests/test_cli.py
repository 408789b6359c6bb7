"""Small traps of the entry points: a bare command, --help anywhere, an option the CLI does not have, and what a run
says on the console."""

import json
import re
import subprocess

import pytest

from experiments.train import main
from tests.conftest import PYTHON, REPO, run_dirs


def test_no_arguments_runs_nothing_and_shows_how_to_start(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bare default run would write results/ here
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "usage: python -m experiments.train CONFIG.yaml [CONFIG.yaml ...] [key=value ...]\nNo arguments: nothing is run"
    )
    assert "configs/smoke.yaml" in err and "configs/default.yaml" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--help"], ["configs/default.yaml", "-h"], ["seed=1", "--help"]])
def test_help_anywhere_prints_the_usage_and_runs_nothing(argv, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("One MRC training run: `python -m experiments.train CONFIG.yaml")


def test_an_option_the_cli_does_not_have_is_named_as_such(tiny_run, capsys):
    assert main(tiny_run("sam_full", "--dry-run")) == 2
    assert capsys.readouterr().err.strip() == (
        "config error: unknown option '--dry-run': the arguments are config "
        "files and key=value overrides (--help explains them)"
    )


@pytest.mark.parametrize(
    "argv, said",
    [
        # the shell splits `optim.lr = 1e-4` into three words; the first is taken for a config file
        (
            ["configs/smoke.yaml", "optim.lr", "=", "1e-4"],
            "config error: config file 'optim.lr': no such file (an override is key=value, written without spaces)",
        ),
        # make run ARM=samfull
        (
            ["configs/smoke.yaml", "configs/arm/samfull.yaml"],
            "config error: config file 'configs/arm/samfull.yaml': no such file; configs/arm/ has: adamw, sam_full, "
            "sam_last, sam_last_only, sam_micro",
        ),
        (
            ["configs/smoke.yaml", "configs/nothere/x.yaml"],
            "config error: config file 'configs/nothere/x.yaml': no such file",
        ),
    ],
)
def test_a_missing_config_file_says_what_was_probably_meant(argv, said, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == said


@pytest.mark.parametrize(
    "module, first_line",
    [
        ("experiments.data.baseline", "A no-learning floor: guess the answer type from question keywords"),
        ("experiments.data.generated", "python -m experiments.data.generated [CONFIG.yaml ...] [key=value ...]"),
        ("experiments.sync", "usage: python -m experiments.sync [RESULTS_DIR]"),
    ],
)
@pytest.mark.slow
def test_module_help_is_help_not_a_file_name(module, first_line):
    done = subprocess.run([PYTHON, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(first_line)
    assert "no such file" not in done.stdout + done.stderr


def test_the_data_generator_refuses_a_bad_value_in_one_line():
    done = subprocess.run(
        [PYTHON, "-m", "experiments.data.generated", "data.generated.n_train=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "config error: data.generated.n_train=0 is out of range; it must be >= 1 (override 'data.generated.n_train=0')"
    )


def test_every_evaluation_is_printed_on_the_console(tiny_run, tmp_path, capsys):
    assert main(tiny_run("sam_full", "train.eval_every=3")) == 0
    err = capsys.readouterr().err
    (run,) = run_dirs(tmp_path)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"dev/f1"' in line]
    printed = re.findall(
        r"\] (\w+) evaluation at update (\d+) \(epoch [\d.]+, \d+ dev examples\): dev/f1 ([\d.]+)  "
        r"dev/em ([\d.]+)  "
        r"dev/loss ([\d.]+)",
        err,
    )
    assert [(kind, int(update)) for kind, update, *_ in printed] == [(e["eval/kind"], e["update"]) for e in evals]
    assert {e["eval/kind"] for e in evals} >= {"periodic", "epoch"}
    for (_, _, f1, em, loss), e in zip(printed, evals):
        assert (f1, em, loss) == (f"{e['dev/f1']:.2f}", f"{e['dev/em']:.2f}", f"{e['dev/loss']:.4f}")


@pytest.mark.slow
def test_the_offline_defaults_are_set_before_the_hub_libraries_load(tmp_path):
    """huggingface_hub and datasets read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once, when first imported, so
    `python -m experiments.train configs/default.yaml` (no `make`, no variables exported) is offline for the embedded
    model only if importing the CLI loads neither and main() sets the defaults first."""
    script = """
import os, sys
for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(key, None)
import experiments.train as train
from experiments.config import load_config
loaded = sorted(m for m in ("datasets", "huggingface_hub", "transformers") if m in sys.modules)
assert not loaded, f"importing experiments.train loaded {loaded}"
train._offline_defaults(load_config(["configs/default.yaml"]))
import datasets, huggingface_hub.constants
assert datasets.config.HF_DATASETS_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE
print("ok")
"""
    done = subprocess.run([PYTHON, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
