"""The Makefile's analysis commands are accepted by the modules they call.

`make run-all` once ran its whole sweep and then failed at the report step because the Makefile passed a key
(`out=`) that analysis.sharpness did not know. Here every `python -m analysis.*` line that `make -n` prints for the
report targets is parsed by that module's own argument parser, and the output folder is checked: the default sweep
reports into results/report/, any other sweep next to it, never over the committed report.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis import dashboard, report
from analysis.sharpness.options import parse_args
from experiments.rundir import report_dir
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _analysis_commands(*make_args: str) -> list[tuple[str, list[str]]]:
    """(module, [key=value ...]) of each `-m analysis.<module>` line `make -n` prints (nothing is run)."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *make_args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    commands = []
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if "-m" in words and words[words.index("-m") + 1].startswith("analysis."):
            at = words.index("-m") + 1
            commands.append((words[at], words[at + 1 :]))
    return commands


@pytest.mark.parametrize(
    "target, sweep, out",
    [
        ("report", "ablation", "results/report"),
        ("report", "smoke", "results/report-smoke"),
        ("sharpness", "ablation", "results/report"),
        ("sharpness", "smoke", "results/report-smoke"),
    ],
)
def test_report_targets_pass_keys_the_modules_accept(target, sweep, out):
    commands = _analysis_commands(target, f"SWEEP={sweep}")
    expected = (
        ["analysis.sharpness", "analysis.report", "analysis.dashboard"]
        if target == "report"
        else ["analysis.sharpness"]
    )
    assert [module for module, _ in commands] == expected
    for module, args in commands:
        if module == "analysis.dashboard":
            parsed = dashboard._parser().parse_args(args)
            assert (parsed.sweep, parsed.settings, parsed.online) == (sweep, ["results_dir=results"], False)
            continue
        if module == "analysis.sharpness":
            opts = parse_args(args)  # raises SharpnessError on a key it does not know
            assert (opts.results_dir, opts.sweep) == ("results", sweep)
            given = opts.out
        else:
            parsed = report.parse_args(args)
            assert (parsed["results_dir"], parsed["sweep"]) == ("results", sweep)
            given = parsed["out"]
        # no out= from the Makefile: each module falls back to the one folder rule
        assert given is None and report_dir("results", sweep) == Path(out)


def _makefile() -> str:
    return (REPO / "Makefile").read_text()


def test_phony_names_are_the_documented_targets():
    """.PHONY once named a `bench` target that did not exist; every phony name is a target with a help line and
    every target with a help line is phony."""
    import re

    text = _makefile()
    phony = set(re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split())
    documented = set(re.findall(r"^([a-zA-Z_-]+):.*## ", text, re.M))
    defined = set(re.findall(r"^([a-zA-Z_-]+):", text, re.M))
    assert phony <= defined, f"phony names without a target: {sorted(phony - defined)}"
    assert phony == documented


def test_make_help_lists_every_target_and_every_variable():
    import re

    done = subprocess.run(
        ["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    listed_targets = set(re.findall(r"^  make (\S+)", done.stdout, re.M))
    listed_variables = set(re.findall(r"^  ([A-Z_]+) ", done.stdout, re.M))
    text = _makefile()
    assert listed_targets == set(re.findall(r"^([a-zA-Z_-]+):.*## ", text, re.M))
    # every variable a user sets on the command line: the ?= ones that are not exported environment defaults
    settable = set(re.findall(r"^([A-Z_]+)\s*\?=", text, re.M))
    assert {"ARM", "ARGS", "RESULTS", "JOBS", "SWEEP"} <= settable == listed_variables
    # and no value carries a trailing comment's blanks (ARM=sam_full must name configs/arm/sam_full.yaml)
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "run"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert "configs/arm/sam_full.yaml results_dir=results" in dry.stdout


@pytest.mark.parametrize(
    "nproc, launcher",
    [
        (None, [".venv/bin/python", "-m", "experiments.train"]),
        ("1", [".venv/bin/python", "-m", "experiments.train"]),
        (
            "2",
            [
                ".venv/bin/python",
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "experiments.train",
            ],
        ),
    ],
)
@pytest.mark.parametrize("target", ["run", "smoke"])
def test_nproc_runs_one_run_under_torchrun(target, nproc, launcher):
    """make run NPROC=N: one run data-parallel over N processes (torchrun picks a free port: --standalone)."""
    args = ["make", "-n", "--no-print-directory", target, "ARGS=seed=3"] + ([f"NPROC={nproc}"] if nproc else [])
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout.strip().splitlines()[-1])
    assert words[: len(launcher)] == launcher
    assert words[len(launcher)].startswith("configs/") and words[-1] == "seed=3"
