"""Shared test set-up: offline everywhere, private Hugging Face caches, one shrinking fixture for end-to-end runs."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports transformers/datasets/wandb: a hub name must fail in a second, never hang.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

# Under pytest-xdist (make test runs 2 workers on a 2-core machine), each worker and the processes it starts get one
# intra-op thread: two workers with torch's default of one thread per core would oversubscribe the cores. The tests
# that are about threads set their own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Private Hugging Face caches for the whole session (subprocesses inherit them): offline, `datasets` serves a hub
# name such as "squad" from whatever its cache holds under that name, so the machine's ~/.cache/huggingface must not
# decide what a test loads. Set (not setdefault) so a user's HF_HOME cannot leak in either.
HF_TEST_HOME = tempfile.mkdtemp(prefix="sam-accum-tests-hf-")
os.environ["HF_HOME"] = HF_TEST_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(HF_TEST_HOME, "datasets")
os.environ["HF_HUB_CACHE"] = os.path.join(HF_TEST_HOME, "hub")
atexit.register(shutil.rmtree, HF_TEST_HOME, ignore_errors=True)

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "configs" / "smoke.yaml")

# The tiny random BERT's parameters outside its embeddings (experiments.model.tiny_config and bench_common's "tiny":
# hidden 32, 2 layers, intermediate 64), the N of the PaLM FLOP count: per layer Q, K, V, O 4 × (32·32 + 32),
# intermediate 32·64 + 64, output 64·32 + 32, two LayerNorms 2 × 64 (= 8544), and the QA head 32·2 + 2.
TINY_NON_EMBEDDING_PARAMS = 2 * (4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64) + (32 * 2 + 2)


def arm_file(arm: str) -> str:
    return str(REPO / "configs" / "arm" / f"{arm}.yaml")


@pytest.fixture(autouse=True)
def _no_shared_wandb_service():
    """wandb keeps the token of the service an in-process run started in os.environ (WANDB_SERVICE), so every
    process a later test starts would join that one service; a run killed there with SIGKILL leaves its stream
    registered, and its resume then fails with "run ID ... is in use" (seen under pytest-xdist). A user's runs start
    from a shell or from the sweep runner, each with a service of its own; so do the tests' processes."""
    os.environ.pop("WANDB_SERVICE", None)
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture
def tiny_run(tmp_path):
    """Arguments for the smallest meaningful run: configs/smoke.yaml shrunk further, results under tmp_path.

    Usage: `main([*tiny_run("sam_full"), "train.max_updates=3"])`. Extra overrides come last and win.
    """

    def args(arm: str = "sam_full", *extra: str) -> list:
        return [
            SMOKE,
            arm_file(arm),
            f"results_dir={tmp_path}",
            "data.generated.n_train=16",
            "data.generated.n_dev=8",
            "train.epochs=2",
            "tracking.mode=disabled",
            *extra,
        ]

    return args


def run_dirs(results_dir: Path) -> list:
    return sorted(p for p in Path(results_dir).glob("runs/*/*") if p.is_dir())


PYTHON = sys.executable


def wandb_records(offline_run: Path) -> list[dict]:
    """Every record of an offline W&B run folder's .wandb transaction log, read by wandb's own reader of offline
    files (`wandb leet inspect --json`, the CLI that ships with wandb)."""
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_run)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"wandb leet inspect failed: {done.stderr[-2000:]}"
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert records, "wandb leet inspect printed no records"
    return records


def offline_wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the run directory's one offline W&B run (run_dir/wandb/offline-run-*; asserts there is
    exactly one)."""
    folders = sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, f"{run_dir}: {len(folders)} offline W&B folders, expected one: {folders}"
    return [r["history"]["item"] for r in wandb_records(folders[0]) if r["type"] == "history"]
