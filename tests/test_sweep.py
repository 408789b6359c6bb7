"""The sweep runner: grid expansion, config checks before anything runs, the manifest, skipping and resuming, failures,
Ctrl-C, parallel slots. Most tests drive a stand-in trainer (a small script that keeps train.py's contract: run
directory from the config, summary.json, exit codes) so that they take seconds; the slow test runs the real smoke sweep.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from experiments import sweep, sweep_runner, sweep_spec
from experiments.config import config_hash, load_config, run_id

REPO = Path(__file__).resolve().parent.parent
SMOKE = "configs/smoke.yaml"
ARMS = {arm: f"configs/arm/{arm}.yaml" for arm in ("adamw", "sam_full", "sam_last", "sam_micro")}

# A trainer with train.py's contract and none of its work. Environment knobs:
#   STANDIN_CALLS  file that gets one JSON line per call (run id, OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES, and under
#                  torchrun RANK and WORLD_SIZE; ranks other than 0 stop there, as train.py's write nothing)
#   STANDIN_SLEEP  seconds to "train"
#   STANDIN_FAIL   "prefix=mode,...": runs whose id starts with prefix crash (summary failed, exit 1),
#                  die (no summary update, exit 1) or diverge (summary diverged, exit 3)
STANDIN = textwrap.dedent(
    """
    import json, os, sys, time
    from experiments.config import ConfigError, config_hash, load_config, run_id, split_args
    from experiments.rundir import atomic_write_json, run_dir

    def main():
        files, overrides = split_args(sys.argv[1:])
        try:
            cfg = load_config(files, overrides)
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
        rid, directory, digest = run_id(cfg), run_dir(cfg), config_hash(cfg)
        if os.environ.get("STANDIN_CALLS"):
            with open(os.environ["STANDIN_CALLS"], "a") as calls:
                calls.write(json.dumps({"run_id": rid, "omp": os.environ.get("OMP_NUM_THREADS"),
                                        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                        "rank": os.environ.get("RANK"), "world": os.environ.get("WORLD_SIZE"),
                                        "world_size": cfg.dist.world_size}) + "\\n")
        if os.environ.get("RANK", "0") != "0":
            return 0
        path = directory / "summary.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("config_hash") != digest:
                print(f"error: run directory {directory} holds a different config", file=sys.stderr)
                return 2
            if old.get("status") == "completed":
                print(f"already completed: {directory}", file=sys.stderr)
                return 0
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.yaml").write_text("stand-in\\n")
        summary = {"status": "running", "reason": None, "run_id": rid, "arm": cfg.arm, "config_hash": digest}
        atomic_write_json(path, summary)
        print(f"starting {rid}", flush=True)
        mode = None
        for rule in filter(None, os.environ.get("STANDIN_FAIL", "").split(",")):
            prefix, kind = rule.split("=")
            mode = kind if rid.startswith(prefix) else mode
        try:
            time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
        except KeyboardInterrupt:
            summary.update(status="failed", reason="interrupted (KeyboardInterrupt)")
            atomic_write_json(path, summary)
            return 130
        if mode == "crash":
            summary.update(status="failed", reason="RuntimeError: boom")
            atomic_write_json(path, summary)
            print("Traceback (most recent call last):\\nRuntimeError: boom", file=sys.stderr)
            return 1
        if mode == "die":
            print("Segmentation fault (stand-in)", file=sys.stderr, flush=True)
            os._exit(1)
        if mode == "diverge":
            summary.update(status="diverged", reason="train/loss is nan at update 3")
            atomic_write_json(path, summary)
            return 3
        final = {"dev/f1": 50.0 + cfg.seed, "dev/em": 40.0, "dev/loss": 1.25, "train/loss": 1.5, "update": 3}
        summary.update(status="completed", final=final, wall_time_s=0.5)
        atomic_write_json(path, summary)
        return 0

    sys.exit(main())
    """
)


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("standin") / "standin_train.py"
    path.write_text(STANDIN)
    return f"{sys.executable} {path}"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment for the stand-in; returns the calls file."""
    for key in ("STANDIN_FAIL", "STANDIN_SLEEP", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", sweep.TRAIN_CMD_ENV):
        monkeypatch.delenv(key, raising=False)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STANDIN_CALLS", str(calls))
    return calls


def write_sweep(tmp_path: Path, **spec) -> Path:
    data = {
        "name": "t",
        "base": [SMOKE],
        "grid": {"arm": [ARMS["adamw"], ARMS["sam_full"], ARMS["sam_last"]], "train.accumulation_steps": [1, 4]},
    }
    data.update(spec)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def calls_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def manifest_of(results: Path, name: str = "t") -> dict:
    return json.loads((results / "runs" / name / "sweep.json").read_text())


def run_sweep(path: Path, results: Path, standin: str, *extra: str) -> int:
    return sweep.main([str(path), f"results_dir={results}", "--gpus", "none", "--train-cmd", standin, *extra])


def file_times(directory: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------------
# the sweep file and the grid


@pytest.mark.parametrize(
    "key, value",
    [
        ("seed", 1),
        ("seed", 0),
        ("seed", -3),
        ("optim.lr", 3e-4),
        ("optim.eps", 1e-8),
        ("optim.rho", 0.1),
        ("optim.adaptive", True),
        ("optim.adaptive", False),
        ("train.max_updates", None),
        ("arm", "none"),
        ("arm", "full"),
        ("arm", "null"),
        ("run_name", "3"),
        ("run_name", "true"),
        ("tracking.group", "a b"),  # text, not a folder name (run_name is one plain name)
        ("run_name", "0123"),
        ("run_name", "on"),
        ("tracking.group", "'x'"),  # text, not a folder name (run_name is one plain name)
        ("tracking.group", " x "),  # text, not a folder name (run_name is one plain name)
        ("tracking.group", "a: b"),  # text, not a folder name (run_name is one plain name)
        ("optim.betas", [0.9, 0.999]),
        ("tracking.tags", []),
        ("tracking.tags", ["0123", "on", "null", "a, b"]),
    ],
)
def test_values_become_overrides_that_read_back_the_same(key, value):
    """What the sweep passes on the command line is what the run's config holds, whatever the key's type."""
    text = f"{key}={sweep_spec._format_value(value)}"
    cfg = load_config([], [text, "optim.replay=full"] if key != "arm" else [text, "custom_arm=true"])
    got = OmegaConf.select(cfg, key)
    got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
    assert got == value and type(got) is type(value), text


def test_sweep_file_values_keep_their_text_for_string_keys_and_type_for_the_others(tmp_path):
    """YAML 1.1 reads 0777 as 511, 1.10 as 1.1 and on/yes as true; a sweep file's values are typed by the schema."""
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"name: t\nbase: [{SMOKE}]\n"
        "grid:\n  tracking.project: [0777]\n  seed: [010]\n"
        "overrides:\n  tracking.group: 1.10\n  tracking.tags: [on, 0123]\n  optim.adaptive: yes\n"
        "exclude:\n  - {seed: 10, tracking.project: 511}\n"  # 511 is not what the file says: nothing excluded
    )
    (run,) = sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}"])
    assert run.cfg.tracking.project == "0777" and run.cfg.seed == 10
    assert run.cfg.tracking.group == "1.10" and list(run.cfg.tracking.tags) == ["on", "0123"]
    assert run.cfg.optim.adaptive is True
    path.write_text(path.read_text().replace("tracking.project: 511}", "tracking.project: 0777}"))
    with pytest.raises(sweep_spec.SweepError, match="no runs left"):  # and a match compares typed values: 010 == 10
        sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}"])


GRID12 = {
    "arm": [ARMS["adamw"], ARMS["sam_full"], ARMS["sam_last"]],
    "train.accumulation_steps": [1, 4],
    "seed": [0, 1],
}


def test_grid_expands_in_a_fixed_order_first_key_slowest(tmp_path):
    spec = sweep_spec.load_sweep(write_sweep(tmp_path, grid=GRID12))
    runs = sweep_spec.expand(spec, [f"results_dir={tmp_path}"])
    got = [(r.cfg.arm, r.cfg.train.accumulation_steps, r.cfg.seed) for r in runs]
    assert got == list(itertools.product(["adamw", "sam_full", "sam_last"], [1, 4], [0, 1]))
    assert [r.index for r in runs] == list(range(1, 13))
    # each run is exactly what train.py resolves from the same files and overrides
    first = runs[0]
    assert first.files == [SMOKE, ARMS["adamw"]]
    assert first.overrides == ["train.accumulation_steps=1", "seed=0", f"results_dir={tmp_path}", "sweep=t"]
    cfg = load_config(first.files, first.overrides)
    assert first.run_id == run_id(cfg) and first.run_id.startswith("adamw-k1-s0-")
    assert first.run_dir == tmp_path / "runs" / "t" / first.run_id
    # deterministic: the same sweep expands to the same ids, and all ids differ
    again = sweep_spec.expand(sweep_spec.load_sweep(write_sweep(tmp_path, grid=GRID12)), [f"results_dir={tmp_path}"])
    assert [r.run_id for r in again] == [r.run_id for r in runs]
    assert len({r.run_id for r in runs}) == 12


def test_run_ids_are_the_same_in_another_process(tmp_path):
    path = write_sweep(tmp_path, grid=GRID12)
    ids = [r.run_id for r in sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}"])]
    out = subprocess.run(
        [sys.executable, "-m", "experiments.sweep", str(path), f"results_dir={tmp_path}", "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    ).stdout
    listed = [line.split()[2] for line in out.splitlines()[2:]]
    assert listed == ids
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_when_exclude_include(tmp_path):
    path = write_sweep(
        tmp_path,
        grid={"arm": [ARMS["adamw"], ARMS["sam_full"], ARMS["sam_micro"]], "train.accumulation_steps": [1, 4]},
        overrides={"train.max_updates": 2},
        when=[{"match": {"optim.replay": ["full", "last", "micro"]}, "overrides": {"diagnostics.grad_fidelity": True}}],
        exclude=[{"arm": "sam_micro", "train.accumulation_steps": 1}],
        include=[{"arm": ARMS["sam_micro"], "train.accumulation_steps": 8, "seed": 5}],
    )
    runs = sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}"])
    got = [(r.cfg.arm, r.cfg.train.accumulation_steps, r.cfg.seed, r.cfg.diagnostics.grad_fidelity) for r in runs]
    assert got == [
        ("adamw", 1, 0, False),
        ("adamw", 4, 0, False),
        ("sam_full", 1, 0, True),
        ("sam_full", 4, 0, True),
        ("sam_micro", 4, 0, True),
        ("sam_micro", 8, 5, True),  # include: after the grid
    ]
    assert all(r.cfg.train.max_updates == 2 for r in runs)
    assert runs[2].extra == ["diagnostics.grad_fidelity=true"] and runs[0].extra == []


def test_command_line_overrides_win_and_collapsed_runs_run_once(tmp_path):
    path = write_sweep(tmp_path, grid=GRID12, overrides={"optim.rho": 0.1})
    runs = sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}", "optim.rho=0.2", "seed=7"])
    assert all(r.cfg.optim.rho == 0.2 and r.cfg.seed == 7 for r in runs)
    assert len(runs) == 6  # the two seeds of the grid became one


def test_mapping_values_set_several_keys_together(tmp_path):
    path = write_sweep(
        tmp_path,
        grid={
            "arm": [ARMS["sam_full"]],
            "opt": [{"optim.lr": 1e-4, "optim.rho": 0.1}, {"optim.lr": 3e-4, "optim.rho": 0.2}],
        },
    )
    runs = sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}"])
    assert [(r.cfg.optim.lr, r.cfg.optim.rho) for r in runs] == [(1e-4, 0.1), (3e-4, 0.2)]


# ---------------------------------------------------------------------------------------------------------------------
# config errors: exit 2, one line, nothing written, nothing started


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"grid": {"arm": [ARMS["adamw"]], "train.accumulation_steps": [1, 0]}}, "train.accumulation_steps"),
        ({"overrides": {"diagnostics.grad_fidelity": True}}, "grad_fidelity"),  # only the adamw runs are bad
        ({"grid": {"arm": [ARMS["sam_full"]], "seed": [0], "optim.rhoo": [0.1]}}, "optim.rhoo"),
        ({"base": [SMOKE, "configs/nope.yaml"]}, "nope.yaml"),
        ({"grid": {"arm": [ARMS["sam_full"], "configs/arm/nope.yaml"]}}, "nope.yaml"),
        ({"grid": {"seed": []}}, "grid.seed"),
        ({"grids": {"seed": [0]}}, "grids"),
        ({"name": "a/b"}, "name"),
        ({"when": [{"match": {"optim.replay": "full"}}]}, "when[0]"),
        ({"exclude": [{"optim.nope": 1}]}, "optim.nope"),
        ({"exclude": [{"seed": 0}]}, "no runs left"),
    ],
)
def test_a_config_error_in_any_run_stops_everything(tmp_path, standin, env, capsys, spec, needle):
    path = write_sweep(tmp_path, **spec)
    results = tmp_path / "results"
    assert run_sweep(path, results, standin) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not results.exists() and not env.exists()


def test_config_error_in_the_last_run_only(tmp_path, standin, env, capsys):
    path = write_sweep(tmp_path, include=[{"arm": ARMS["sam_full"], "optim.rho": -1}])
    assert run_sweep(path, tmp_path / "r", standin) == 2
    err = capsys.readouterr().err
    assert "run 7" in err and "optim.rho" in err
    assert not (tmp_path / "r").exists() and not env.exists()


# ---------------------------------------------------------------------------------------------------------------------
# running with the stand-in trainer


@pytest.mark.slow
def test_sweep_runs_everything_and_writes_the_manifest(tmp_path, standin, env, capsys):
    path = write_sweep(tmp_path)
    results = tmp_path / "results"
    assert run_sweep(path, results, standin) == 0
    out = capsys.readouterr().out
    manifest = manifest_of(results)
    assert manifest["name"] == "t" and manifest["sweep_file"] == str(path)
    assert manifest["created"] <= manifest["updated"]
    runs = manifest["runs"]
    expected = sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={results}"])
    assert [r["run_id"] for r in runs] == [r.run_id for r in expected]
    for entry, run in zip(runs, expected):
        assert entry["status"] == "completed" and entry["exit_code"] == 0 and entry["reason"] is None
        assert entry["files"] == run.files and entry["overrides"] == run.overrides
        assert entry["run_dir"] == str(run.run_dir) and entry["wall_time_s"] > 0
        assert json.loads((run.run_dir / "summary.json").read_text())["status"] == "completed"
        log = Path(entry["log"])
        assert log == results / "runs" / "t" / "logs" / f"{run.run_id}.log"
        assert f"starting {run.run_id}" in log.read_text()
    assert sorted(c["run_id"] for c in calls_of(env)) == sorted(r.run_id for r in expected)
    # progress: a start and a finish line per run, then the table with the metrics from summary.json
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert sum(" start " in line for line in progress) == 6
    assert sum(" completed in " in line for line in progress) == 6
    assert "ETA" in out
    table = out[out.index("run id") :]
    assert "dev/f1" in table and "50" in table and "1.25" in table
    *_, counts, floor = out.splitlines()
    assert "6 completed" in counts
    # the stand-in trainer writes no env.json, so nothing says the runs trained on one CPU thread each
    assert floor == f"compute floor: not computed ({expected[0].run_id} wrote no env.json)"


@pytest.mark.slow
def test_a_second_invocation_starts_no_run_and_touches_no_run_dir(tmp_path, standin, env, capsys):
    path = write_sweep(tmp_path)
    results = tmp_path / "results"
    assert run_sweep(path, results, standin) == 0
    first = manifest_of(results)
    n_calls = len(calls_of(env))
    runs_dir = results / "runs" / "t"
    before = {d.name: file_times(d) for d in runs_dir.iterdir() if d.is_dir() and d.name != "logs"}
    capsys.readouterr()
    time.sleep(0.02)
    assert run_sweep(path, results, standin) == 0
    assert len(calls_of(env)) == n_calls
    after = {d.name: file_times(d) for d in runs_dir.iterdir() if d.is_dir() and d.name != "logs"}
    assert after == before
    second = manifest_of(results)
    assert second["created"] == first["created"]
    assert {r["status"] for r in second["runs"]} == {"completed"}
    assert {r["action"] for r in second["runs"]} == {"skip"}
    assert " start " not in capsys.readouterr().out


@pytest.mark.slow
def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, standin, env, monkeypatch, capsys):
    path = write_sweep(tmp_path)
    results = tmp_path / "results"
    monkeypatch.setenv("STANDIN_FAIL", "adamw-k4-s0=crash,sam_full-k1-s0=die,sam_last-k4-s0=diverge")
    assert run_sweep(path, results, standin) == 1
    by_id = {r["run_id"].rsplit("-", 1)[0]: r for r in manifest_of(results)["runs"]}
    assert by_id["adamw-k4-s0"]["status"] == "failed" and by_id["adamw-k4-s0"]["exit_code"] == 1
    assert by_id["adamw-k4-s0"]["reason"] == "RuntimeError: boom"  # from its summary.json
    assert by_id["sam_full-k1-s0"]["status"] == "failed"
    assert by_id["sam_full-k1-s0"]["reason"] == "Segmentation fault (stand-in)"  # no reason there: last log line
    assert by_id["sam_last-k4-s0"]["status"] == "diverged" and by_id["sam_last-k4-s0"]["exit_code"] == 3
    assert by_id["sam_last-k4-s0"]["reason"] == "train/loss is nan at update 3"
    others = [r for key, r in by_id.items() if key not in ("adamw-k4-s0", "sam_full-k1-s0", "sam_last-k4-s0")]
    assert len(others) == 3 and all(r["status"] == "completed" for r in others)
    out = capsys.readouterr().out
    assert "RuntimeError: boom" in out and "3 completed, 2 failed, 1 diverged" in out

    # Fixed: the failed ones run again (the trainer resumes them); completed and diverged ones are left alone.
    monkeypatch.delenv("STANDIN_FAIL")
    n_calls = len(calls_of(env))
    assert sweep.main([str(path), f"results_dir={results}", "--gpus", "none", "--train-cmd", standin, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "2 to rerun" in listing and "4 to skip" in listing
    assert run_sweep(path, results, standin) == 1  # the diverged run stays diverged
    rerun = [c["run_id"].rsplit("-", 1)[0] for c in calls_of(env)[n_calls:]]
    assert sorted(rerun) == ["adamw-k4-s0", "sam_full-k1-s0"]
    statuses = {r["run_id"].rsplit("-", 1)[0]: r["status"] for r in manifest_of(results)["runs"]}
    assert statuses["adamw-k4-s0"] == statuses["sam_full-k1-s0"] == "completed"
    assert statuses["sam_last-k4-s0"] == "diverged"


def test_a_run_dir_with_another_config_is_never_touched(tmp_path, standin, env, capsys):
    path = write_sweep(tmp_path, grid={"arm": [ARMS["adamw"]], "seed": [0, 1]})
    results = tmp_path / "results"
    runs = sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={results}"])
    theirs = runs[0].run_dir
    theirs.mkdir(parents=True)
    (theirs / "summary.json").write_text(json.dumps({"status": "completed", "config_hash": "0123456789"}))
    (theirs / "weights.bin").write_bytes(b"precious")
    before = file_times(theirs)
    time.sleep(0.02)
    assert run_sweep(path, results, standin) == 1
    assert file_times(theirs) == before
    entry = manifest_of(results)["runs"][0]
    assert entry["status"] == "skipped" and "another config" in entry["reason"]
    assert [c["run_id"] for c in calls_of(env)] == [runs[1].run_id]


def test_a_config_file_edited_mid_sweep_fails_that_run_only(tmp_path, standin, env):
    arm = tmp_path / "my_arm.yaml"
    arm.write_text("arm: mine\ncustom_arm: true\noptim: {replay: full, rho: 0.05}\n")
    path = write_sweep(tmp_path, grid={"arm": [ARMS["adamw"], str(arm)]})
    results = tmp_path / "results"
    spec = sweep_spec.load_sweep(path)
    runs = sweep_spec.expand(spec, [f"results_dir={results}"])
    for run in runs:
        sweep.plan(run)
    arm.write_text("arm: mine\ncustom_arm: true\noptim: {replay: full, rho: 0.5}\n")  # after planning, before it starts
    manifest = sweep_runner.Manifest(spec, runs, results / "runs" / "t", [])
    runner = sweep_runner.Runner(runs, manifest, standin.split(), jobs=1, gpus=[])
    assert runner.run()
    assert runs[0].status == "completed"
    assert runs[1].status == "failed" and "changed since the sweep started" in runs[1].reason
    assert [c["run_id"] for c in calls_of(env)] == [runs[0].run_id]


@pytest.mark.slow
def test_dry_run_lists_what_would_happen_and_writes_nothing(tmp_path, standin, env, monkeypatch, capsys):
    path = write_sweep(tmp_path, grid={"arm": [ARMS["adamw"]], "seed": [0, 1, 2]})
    results = tmp_path / "results"
    monkeypatch.setenv("STANDIN_FAIL", "adamw-k2-s1=crash")  # configs/smoke.yaml has k=2
    assert run_sweep(path, results, standin, "--jobs", "1") == 1
    (results / "runs" / "t" / "sweep.json").unlink()
    tree_before = file_times(results)
    capsys.readouterr()
    assert run_sweep(path, results, standin, "--dry-run", "seed=0") == 0  # seed=0 collapses the grid
    assert run_sweep(path, results, standin, "--dry-run") == 0
    out = capsys.readouterr().out.splitlines()
    lines = out[-3:]
    assert [line.split()[1] for line in lines] == ["skip", "rerun", "skip"]
    assert "previous attempt: failed (RuntimeError: boom)" in lines[1]
    assert file_times(results) == tree_before and not (results / "runs" / "t" / "sweep.json").exists()


# ---------------------------------------------------------------------------------------------------------------------
# parallel slots


@pytest.mark.slow
def test_jobs_share_the_cpu_cores(tmp_path, standin, env, monkeypatch):
    monkeypatch.setenv("STANDIN_SLEEP", "0.5")
    # configs/default.yaml leaves train.num_threads null (configs/smoke.yaml sets it)
    path = write_sweep(tmp_path, base=["configs/default.yaml"], grid={"arm": [ARMS["adamw"]], "seed": [0, 1, 2, 3]})
    results = tmp_path / "results"
    assert run_sweep(path, results, standin, "--jobs", "2") == 0
    calls = calls_of(env)
    assert len(calls) == 4
    assert {c["omp"] for c in calls} == {str(max(1, sweep_runner._cpu_cores() // 2))}
    # the user's thread count (config or environment) is left alone
    assert run_sweep(path, tmp_path / "r2", standin, "--jobs", "2", "train.num_threads=1") == 0
    assert {c["omp"] for c in calls_of(env)[4:]} == {None}


@pytest.mark.slow
def test_one_run_per_gpu(tmp_path, standin, env, monkeypatch):
    monkeypatch.setattr(sweep_runner, "_cuda_device_count", lambda: 2)
    monkeypatch.setenv("STANDIN_SLEEP", "0.3")
    path = write_sweep(tmp_path, grid={"arm": [ARMS["adamw"]], "seed": [0, 1, 2, 3]})
    args = [str(path), f"results_dir={tmp_path / 'a'}", "--gpus", "auto", "--train-cmd", standin]
    assert sweep.main(args) == 0
    calls = calls_of(env)
    assert {c["cuda"] for c in calls} == {"0", "1"} and {c["omp"] for c in calls} == {None}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the slots are the devices the runner was given
    args = [str(path), f"results_dir={tmp_path / 'b'}", "--gpus", "auto", "--train-cmd", standin]
    assert sweep.main(args) == 0
    assert {c["cuda"] for c in calls_of(env)[4:]} == {"4", "6"}
    assert sweep_runner.pick_gpus("none") == [] and sweep_runner.pick_gpus("2,3") == ["2", "3"]
    monkeypatch.setattr(sweep_runner, "_cuda_device_count", lambda: 1)
    assert sweep_runner.pick_gpus("auto") == []


@pytest.mark.slow
def test_several_gpus_per_run_make_each_run_one_torchrun(tmp_path, standin, env, monkeypatch):
    """--gpus-per-run 2: each run is `torchrun --nproc_per_node=2` with dist.world_size=2 in its overrides (a run id
    of its own), on a slot of 2 GPUs; without GPUs, 2 CPU processes."""
    monkeypatch.setattr(sweep_runner, "_cuda_device_count", lambda: 5)
    path = write_sweep(tmp_path, grid={"arm": [ARMS["adamw"]], "seed": [0, 1, 2]})
    args = [str(path), f"results_dir={tmp_path / 'a'}", "--gpus", "auto", "--gpus-per-run", "2", "--train-cmd", standin]
    assert sweep.main(args) == 0
    calls = calls_of(env)
    assert len(calls) == 6  # 3 runs x 2 ranks
    for rid in {c["run_id"] for c in calls}:
        mine = [c for c in calls if c["run_id"] == rid]
        assert sorted(c["rank"] for c in mine) == ["0", "1"] and {c["world"] for c in mine} == {"2"}
        assert len({c["cuda"] for c in mine}) == 1 and mine[0]["cuda"] in ("0,1", "2,3")  # GPU 4 is left over
        assert mine[0]["world_size"] == 2 and "-w2-" in rid
    manifest = manifest_of(tmp_path / "a")
    assert all(r["status"] == "completed" and "dist.world_size=2" in r["overrides"] for r in manifest["runs"])
    # CPU: each run 2 processes; 2 runs at a time share the cores among 4 processes
    monkeypatch.setattr(sweep_runner, "_cuda_device_count", lambda: 0)
    args = [str(path), f"results_dir={tmp_path / 'b'}", "--jobs", "2", "--gpus-per-run", "2", "--train-cmd", standin]
    assert sweep.main(args) == 0
    cpu_calls = calls_of(env)[6:]
    assert len(cpu_calls) == 6 and {c["cuda"] for c in cpu_calls} == {None}
    assert {c["omp"] for c in cpu_calls} == {str(max(1, sweep_runner._cpu_cores() // 4))}
    assert sweep_runner.gpu_slots(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    with pytest.raises(sweep_spec.SweepError, match="needs at least 2 GPUs"):
        sweep_runner.pick_gpus("3", 2)


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.slow
def test_ctrl_c_stops_the_children_and_the_next_invocation_resumes(tmp_path, standin, env):
    path = write_sweep(tmp_path, grid={"arm": [ARMS["adamw"]], "seed": [0, 1, 2, 3]})
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "experiments.sweep",
        str(path),
        f"results_dir={results}",
        "--jobs",
        "2",
        "--gpus",
        "none",
        "--train-cmd",
        standin,
    ]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "STANDIN_SLEEP": "60"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    manifest = results / "runs" / "t" / "sweep.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until both slots run (their summary.json says running)
        if manifest.exists() and len(calls_of(env)) == 2:
            dirs = [Path(r["run_dir"]) for r in json.loads(manifest.read_text())["runs"][:2]]
            if all((d / "summary.json").exists() for d in dirs):
                break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    statuses = [r["status"] for r in json.loads(manifest.read_text())["runs"]]
    assert statuses == ["interrupted", "interrupted", "pending", "pending"], out
    # the stand-in saves no resume checkpoint, so the manifest must not promise a resume
    assert all(
        r["reason"].endswith("the next invocation starts it over (no resume checkpoint)")
        for r in json.loads(manifest.read_text())["runs"][:2]
    )
    for entry in json.loads(manifest.read_text())["runs"][:2]:
        summary = json.loads((Path(entry["run_dir"]) / "summary.json").read_text())
        assert summary["reason"] == "interrupted (KeyboardInterrupt)"  # the child got SIGINT and saved its state
    # the next invocation reruns the interrupted ones and runs the rest
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["action"] for r in json.loads(manifest.read_text())["runs"]] == ["rerun", "rerun", "run", "run"]


# ---------------------------------------------------------------------------------------------------------------------
# the sweep files in configs/


@pytest.mark.slow
def test_the_ablation_sweep_resolves(tmp_path):
    spec = sweep_spec.load_sweep(REPO / "configs/sweep/ablation.yaml")
    runs = sweep_spec.expand(spec, [f"results_dir={tmp_path}"])
    # k = 8: adamw, sam_full, sam_last, sam_last_only x seeds 0-2; k = 1 (the sanity row): every arm, seed 0
    assert len(runs) == 17
    cells = {(r.cfg.arm, r.cfg.optim.replay, r.cfg.train.accumulation_steps, r.cfg.seed) for r in runs}
    replay = {
        "adamw": "none",
        "sam_full": "full",
        "sam_last": "last",
        "sam_micro": "micro",
        "sam_last_only": "last_only",
    }
    expected = {(a, replay[a], 1, 0) for a in replay}
    expected |= {(a, replay[a], 8, s) for a in ("adamw", "sam_full", "sam_last", "sam_last_only") for s in (0, 1, 2)}
    assert cells == expected
    # the budget as documented: 100 updates of 4 x 8 features at k = 8, 24 at k = 1, every run on the same data
    for r in runs:
        assert r.cfg.train.max_updates == (100 if r.cfg.train.accumulation_steps == 8 else 24)
        assert (r.cfg.train.micro_batch_size, r.cfg.data.max_seq_length, r.cfg.optim.lr) == (4, 64, 3e-4)
        assert r.cfg.eval.subset_size == 80 and r.cfg.train.eval_every in (6, 10)
    assert all(r.cfg.diagnostics.grad_fidelity == (r.cfg.optim.replay != "none") for r in runs)
    assert all(r.cfg.sweep == "ablation" for r in runs)
    assert spec.report == {"targets": {"dev/f1": [70.0, 85.0, 95.0], "dev/loss": [1.0, 0.3]}}


@pytest.mark.slow
def test_the_gpu_sweep_resolves_to_the_paper_size_grid(tmp_path):
    runs = sweep_spec.expand(
        sweep_spec.load_sweep(REPO / "configs/sweep/ablation_gpu.yaml"), [f"results_dir={tmp_path}"]
    )
    cells = {(r.cfg.arm, r.cfg.train.accumulation_steps, r.cfg.seed) for r in runs}
    assert cells == set(itertools.product(["sam_full", "sam_last", "sam_micro", "adamw"], [8, 4, 1], range(5)))
    assert all(r.cfg.train.precision == "bf16" and r.cfg.data.generated.n_train == 4800 for r in runs)


def test_a_sweep_report_block_is_checked_when_read(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: [configs/default.yaml]\ngrid: {seed: [0]}\nreport: {targets: {dev/acc: [1]}}\n")
    with pytest.raises(sweep_spec.SweepError, match="report.targets.dev/acc is not a dev metric"):
        sweep_spec.load_sweep(path)
    path.write_text("name: s\nbase: [configs/default.yaml]\ngrid: {seed: [0]}\nreport: {targets: {dev/f1: 90}}\n")
    with pytest.raises(sweep_spec.SweepError, match="report.targets.dev/f1 must be a non-empty list of numbers"):
        sweep_spec.load_sweep(path)


def test_the_smoke_sweep_resolves(tmp_path):
    runs = sweep_spec.expand(sweep_spec.load_sweep(REPO / "configs/sweep/smoke.yaml"), [f"results_dir={tmp_path}"])
    assert len(runs) == 12
    cells = {(r.cfg.arm, r.cfg.train.accumulation_steps, r.cfg.seed) for r in runs}
    assert cells == set(itertools.product(["adamw", "sam_full", "sam_last"], [1, 4], [0, 1]))
    assert all(r.cfg.model.name_or_path == "tiny-random-bert" for r in runs)


def agent_commands(config: dict) -> list[list[str]]:
    """The grid of a W&B sweep config expanded here, without a server: the cross product of its parameters' values
    (the grid method's order), each point turned into the command the agent runs, macros filled in as wandb's agent
    fills them (wandb.sdk.launch.sweeps.utils.create_sweep_command_args; ${env} and ${interpreter} left out)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    assert config["method"] == "grid"
    params = config["parameters"]
    axes = {key: p["values"] if "values" in p else [p["value"]] for key, p in params.items()}
    commands = []
    for values in itertools.product(*axes.values()):
        args = create_sweep_command_args({"args": {key: {"value": v} for key, v in zip(axes, values)}})
        command = []
        for part in config["command"]:
            if part in ("${env}", "${interpreter}"):
                continue
            command += args[part[2:-1]] if part.startswith("${") else [part]
        commands.append(command)
    return commands


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ablation", "smoke", "ablation_gpu"])
def test_the_generated_wandb_sweep_runs_exactly_the_plan(tmp_path, name):
    """`--wandb-sweep` of each sweep file: its grid, expanded here as the agent expands it, is the run ids of the
    repo's own plan, in order, once each, and each agent command is `experiments.sweep <the file> results_dir=...
    tracking.mode=online --only=<id>`. A run id is <arm>-k<k>-s<seed>-<config hash> and tracking.* is outside the hash,
    so equal ids mean the same config and the same run directory."""
    sweep_file = f"configs/sweep/{name}.yaml"
    out = tmp_path / f"{name}.yaml"
    results = f"results_dir={tmp_path / 'shared'}"
    assert sweep.main([sweep_file, results, "--wandb-sweep", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    plan = sweep_spec.expand(sweep_spec.load_sweep(REPO / sweep_file), [results])
    commands = agent_commands(config)
    assert len(commands) == len(plan)
    parsed = [sweep._parser().parse_intermixed_args(c[2:]) for c in commands]
    assert {tuple(c[:2]) for c in commands} == {("-m", "experiments.sweep")}
    assert [a.only for a in parsed] == [run.run_id for run in plan]
    assert {a.sweep_file for a in parsed} == {sweep_file}
    assert {tuple(a.overrides) for a in parsed} == {(results, "tracking.mode=online")}
    assert config["name"] == name and config["project"] == "sam-accum"
    if name == "ablation":
        # the cells that are not a full product: k = 1 only at seed 0 with its own budget, m-SAM only at k = 1
        cells = sorted((r.cfg.arm, r.cfg.train.accumulation_steps, r.cfg.seed, r.cfg.train.max_updates) for r in plan)
        arms = ["adamw", "sam_full", "sam_last", "sam_last_only"]
        expected = [(a, 8, s, 100) for a in arms for s in (0, 1, 2)] + [(a, 1, 0, 24) for a in [*arms, "sam_micro"]]
        assert cells == sorted(expected)


@pytest.mark.slow
def test_only_trains_one_run_of_the_smoke_sweep_into_its_run_directory(tmp_path):
    """What a W&B agent job runs: `--only RUN_ID` trains that run, and nothing else, into the directory the local
    sweep uses; a second call finds it completed; an id outside the plan is exit 2."""
    args = ["configs/sweep/smoke.yaml", f"results_dir={tmp_path}", "tracking.mode=disabled", "train.max_updates=2"]
    plan = sweep_spec.expand(sweep_spec.load_sweep(REPO / args[0]), args[1:])
    target = plan[4]  # sam_full, k = 1, seed 0
    command = [sys.executable, "-m", "experiments.sweep", *args, f"--only={target.run_id}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"run 5 of 12, {target.run_id}" in done.stdout
    summary = json.loads((target.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config_hash"] == config_hash(target.cfg)
    assert summary["arm"] == target.cfg.arm == "sam_full" and summary["updates"] == 2
    assert [p.name for p in target.run_dir.parent.iterdir() if p.is_dir()] == [target.run_id]  # that one run only
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "is already completed" in again.stdout
    assert sweep.main([*args, "--only=no-such-run"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# the real thing


@pytest.mark.slow
def test_the_smoke_sweep_end_to_end(tmp_path):
    """configs/sweep/smoke.yaml with the real trainer, shrunk to one seed (each arm at each k still runs: the smallest
    grid that covers every path): 6 runs on 2 jobs, then a second invocation runs none."""
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "experiments.sweep",
        "configs/sweep/smoke.yaml",
        f"results_dir={results}",
        "tracking.mode=disabled",
        "train.max_updates=2",
        "data.generated.n_train=16",
        "data.generated.n_dev=8",
        "seed=0",  # collapses the seed axis: the 6 cells arm x k of seed 0
        "--jobs",
        "2",
        "--gpus",
        "none",
    ]
    started = time.monotonic()
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = json.loads((results / "runs" / "smoke" / "sweep.json").read_text())
    assert len(manifest["runs"]) == 6
    assert {(e["run_id"].split("-")[0], e["run_id"].split("-")[1]) for e in manifest["runs"]} == {
        (arm, f"k{k}") for arm in ("adamw", "sam_full", "sam_last") for k in (1, 4)
    }
    for entry in manifest["runs"]:
        assert entry["status"] == "completed" and entry["exit_code"] == 0, entry
        summary = json.loads((Path(entry["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["run_id"] == entry["run_id"]
        assert 0.0 <= summary["final"]["dev/f1"] <= 100.0
        assert summary["updates"] == 2  # what the floor's pass count below assumes, from the run itself
    *_, counts, floor_line = first.stdout.splitlines()
    assert "6 completed" in counts
    # the compute floor of the 6 runs' literal passes (max_updates 2, micro-batch 4, k in {1, 4}, one seed):
    # adamw 2 · 4k, sam_full and sam_last 2 · 2 · 4k example-passes per run
    compute = manifest["compute"]
    assert compute["runs"] == 6 and compute["jobs"] == 2
    assert compute["literal_example_passes"] == 2 * (4 + 16) + 2 * 2 * (4 + 16) * 2
    assert compute["ratio"] == round(compute["wall_s"] / compute["floor_s"], 2)
    assert (
        floor_line.startswith("compute floor: 200 literal example-passes") and f"{compute['ratio']:.2f}×" in floor_line
    )
    print(f"smoke sweep: {time.monotonic() - started:.0f}s")
    before = {e["run_id"]: file_times(Path(e["run_dir"])) for e in manifest["runs"]}
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert " start " not in second.stdout
    again = json.loads((results / "runs" / "smoke" / "sweep.json").read_text())
    assert {e["action"] for e in again["runs"]} == {"skip"}
    assert {e["run_id"]: file_times(Path(e["run_dir"])) for e in again["runs"]} == before


def test_an_exclude_rule_with_a_misspelt_arm_is_refused(tmp_path):
    """issue 21 class 6 in sweep files: exclude {arm: sam_mirco} would match nothing and keep the runs it meant."""
    path = write_sweep(tmp_path, exclude=[{"arm": "sam_lastt", "train.accumulation_steps": 1}])
    with pytest.raises(sweep_spec.SweepError) as info:
        sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}"])
    assert str(info.value) == (
        "sweep t: exclude rule {'arm': 'sam_lastt', 'train.accumulation_steps': '1'} names arm 'sam_lastt', which no "
        "run of the sweep has (adamw, sam_full, sam_last); did you mean sam_last?"
    )
    # an arm of the table that this sweep does not run is fine (a rule shared between sweeps)
    path = write_sweep(tmp_path, exclude=[{"arm": "sam_micro"}])
    assert len(sweep_spec.expand(sweep_spec.load_sweep(path), [f"results_dir={tmp_path}"])) == 6


# ---------------------------------------------------------------------------------------------------------------------
# reuse: another sweep's completed runs of the same id are linked in, not retrained


def _completed_copy(run, folder: Path, config_hash_value: str) -> Path:
    """A completed run directory of `run` under `folder` whose summary carries `config_hash_value`."""
    path = folder / run.run_id
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(run.cfg), encoding="utf-8")
    summary = {"status": "completed", "config_hash": config_hash_value, "final": {"dev/f1": 12.5}}
    (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


def test_reuse_links_a_completed_run_of_the_same_hash_and_trains_the_others(tmp_path, capsys):
    sweep_file = tmp_path / "b.yaml"
    sweep_file.write_text(
        textwrap.dedent(
            f"""
            name: b
            base: [{REPO / "configs" / "smoke.yaml"}]
            reuse: [a]
            grid:
              seed: [0, 1, 2]
            overrides:
              results_dir: {tmp_path}
              tracking.mode: disabled
            """
        ),
        encoding="utf-8",
    )
    spec = sweep_spec.load_sweep(sweep_file)
    runs = sweep_spec.expand(spec)
    other = tmp_path / "runs" / "a"
    same = _completed_copy(runs[0], other, config_hash(runs[0].cfg))
    _completed_copy(runs[1], other, "0000000000")  # the same id, another config: never reused
    assert sweep.main([str(sweep_file), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "(2 to run, 1 to reuse)" in listing and f"reuse    {runs[0].run_id}" in listing
    assert not (tmp_path / "runs" / "b").exists()  # a dry run links nothing

    linked = sweep.link_reused(runs, spec)
    assert [r.run_id for r in linked] == [runs[0].run_id]
    target = runs[0].run_dir / "summary.json"
    assert target.stat().st_ino == (same / "summary.json").stat().st_ino  # a hard link, not a copy
    sweep.plan(runs[0])
    assert (runs[0].action, runs[0].status) == ("skip", "completed")
    assert sweep.reusable(runs[0], spec) is None  # it is this sweep's own now
    assert not runs[1].run_dir.exists() and not runs[2].run_dir.exists()


def test_a_reuse_entry_must_name_another_sweep(tmp_path):
    sweep_file = tmp_path / "b.yaml"
    sweep_file.write_text("name: b\nreuse: [b]\ngrid:\n  seed: [0]\n", encoding="utf-8")
    with pytest.raises(sweep_spec.SweepError, match="reuse must list the names of other sweeps"):
        sweep_spec.load_sweep(sweep_file)


@pytest.mark.slow
def test_the_dose_sweep_holds_its_window_fixed_and_pairs_each_k_with_its_control(tmp_path):
    """configs/sweep/dose.yaml: every run but the control sees windows of N = 32 examples; the control is sam_full at
    k = 1 on batches of N/k; the bug arms run k = 4, 8, 16 at seeds 0-2, all with the replay shortcut; sam_full at
    k = 1 (3 seeds) and 16 (2 seeds); the runs that share an id with the default ablation (and so are reused from it)
    are exactly sam_last at k = 8; the control's short runs come last, so a sweep cut short loses the cheapest cells
    first."""
    results = f"results_dir={tmp_path}"
    spec = sweep_spec.load_sweep(REPO / "configs/sweep/dose.yaml")
    assert spec.reuse == ["ablation"]
    plan = sweep_spec.expand(spec, [results])
    ablation = {r.run_id for r in sweep_spec.expand(sweep_spec.load_sweep(REPO / "configs/sweep/ablation.yaml"))}
    cells = {}
    for r in plan:
        t = r.cfg.train
        assert t.max_updates == 100 and r.cfg.optim.lr == 3e-4 and r.cfg.data.max_seq_length == 64
        cells[(r.cfg.arm, t.accumulation_steps, t.micro_batch_size, r.cfg.seed)] = r
    seeds = (0, 1, 2)
    ks = (4, 8, 16)
    expected = {(arm, k, 32 // k, s) for arm in ("sam_last", "sam_last_only") for k in ks for s in seeds}
    expected |= {("sam_full", 1, 32, s) for s in seeds} | {("sam_full", 16, 2, s) for s in (0, 1)}
    expected |= {("sam_full", 1, 32 // k, s) for k in ks for s in seeds}  # the control: batches of N/k
    expected |= {("sam_micro", 8, 4, s) for s in (0, 1)}
    assert set(cells) == expected and len(plan) == len(expected) == 34
    for (arm, _k, _micro, _seed), r in cells.items():
        bug = arm in ("sam_last", "sam_last_only")
        assert r.cfg.optim.replay_shortcut == bug
        assert r.cfg.diagnostics.grad_fidelity == (arm == "sam_last")
        assert (r.run_id in ablation) == (arm == "sam_last" and _k == 8), r.run_id
    tail = [(r.cfg.train.accumulation_steps, r.cfg.train.micro_batch_size) for r in plan[-9:]]
    assert tail == [(1, 8)] * 3 + [(1, 4)] * 3 + [(1, 2)] * 3  # the control, largest batch first


def test_the_gpu_dose_grid_is_the_whole_design_at_5_seeds_and_k_up_to_32():
    """configs/sweep/dose_gpu.yaml (read, not expanded: its 140 runs take minutes of config merging here): the same
    overrides as dose.yaml, windows of N = 32 at k = 2 ... 32 and the control's batches N/k at k = 1, every arm, seeds
    0-4, no replay shortcut (the copied loops run literally) and no budget cuts in its exclude rules."""
    gpu = sweep_spec.load_sweep(REPO / "configs/sweep/dose_gpu.yaml")
    cpu = sweep_spec.load_sweep(REPO / "configs/sweep/dose.yaml")
    assert gpu.overrides == cpu.overrides
    windows = [(int(w["train.accumulation_steps"]), int(w["train.micro_batch_size"])) for w in gpu.grid["window"]]
    ks = (2, 4, 8, 16, 32)
    assert sorted(windows) == sorted([(k, 32 // k) for k in ks] + [(1, 32 // k) for k in (1, *ks)])
    assert [int(s) for s in gpu.grid["seed"]] == [0, 1, 2, 3, 4]
    assert {Path(a).stem for a in gpu.grid["arm"]} == {"sam_full", "sam_micro", "sam_last", "sam_last_only", "adamw"}
    assert not any("replay_shortcut" in o for _rule, overrides in gpu.when for o in overrides)
    assert any("replay_shortcut" in o for _rule, overrides in cpu.when for o in overrides)  # the check can fail
    assert not any("seed" in rule for rule in gpu.exclude)
    # its only exclusions: the k = 1 cells every SAM rule shares with sam_full, and adamw off k = 1 and 8
    assert {str(rule["arm"]) for rule in gpu.exclude} == {"['sam_micro', 'sam_last', 'sam_last_only']", "adamw"}
