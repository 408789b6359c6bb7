"""experiments.allocator: glibc keeps the large gradient blocks on the heap, the environment wins, and the weights do
not change by a bit.

Each check runs in a fresh interpreter: glibc's settings are per process, and this one's were set by whatever ran
before. `hblks` of mallinfo2(3) counts the blocks glibc serves from mmap.
"""

import ctypes
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, SMOKE, arm_file

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="glibc >= 2.33 (mallinfo2) and its malloc settings",
)

# a 47 MiB block (the embedded MiniLM's word-embedding gradient is 46.9 MB): how many mmapped blocks it adds
PROBE = """
import ctypes, json, sys
from experiments.allocator import keep_large_blocks_on_heap
applied = keep_large_blocks_on_heap() if sys.argv[1] == "apply" else {}
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks
block = libc.malloc(47 << 20)
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblks - before}))
"""

GLIBC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_TOP_PAD_": "131072"}


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return {**env, **extra}


def _probe(mode: str, env: dict) -> dict:
    done = subprocess.run(
        [PYTHON, "-c", PROBE, mode], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_47_mib_block_comes_from_the_heap_once_applied_and_from_mmap_by_default():
    default = _probe("none", _clean_env())
    applied = _probe("apply", _clean_env())
    assert default == {"applied": {}, "mmapped": 1}
    assert applied["mmapped"] == 0
    assert applied["applied"] == {
        "MALLOC_MMAP_THRESHOLD_": 128 << 20,
        "MALLOC_TRIM_THRESHOLD_": 1 << 30,
        "MALLOC_TOP_PAD_": 128 << 20,
    }


def test_a_setting_in_the_environment_wins():
    probe = _probe("apply", _clean_env(MALLOC_MMAP_THRESHOLD_="131072"))
    assert "MALLOC_MMAP_THRESHOLD_" not in probe["applied"]
    assert set(probe["applied"]) == {"MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}
    assert probe["mmapped"] == 1  # glibc read the environment's 128 KiB threshold at start-up


def test_glibc_tunables_for_malloc_leave_every_setting_to_the_user():
    probe = _probe("apply", _clean_env(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072"))
    assert probe == {"applied": {}, "mmapped": 1}


@pytest.mark.slow
def test_weights_after_two_updates_are_bitwise_identical_with_and_without(tmp_path):
    """The embedded MiniLM (where the 47 MB gradient lives), sam_full, 2 updates, in two processes: one with the
    settings applied, one with glibc's defaults forced through the environment."""
    weights, recorded = {}, {}
    for name, env in (("applied", _clean_env()), ("glibc", _clean_env(**GLIBC_DEFAULTS))):
        out = tmp_path / name
        args = [
            SMOKE,
            arm_file("sam_full"),
            f"results_dir={out}",
            "model.name_or_path=embedded",
            "data.generated.n_train=16",
            "data.generated.n_dev=8",
            "train.micro_batch_size=2",
            "train.max_updates=2",
            "tracking.mode=disabled",
        ]
        done = subprocess.run(
            [PYTHON, "-m", "experiments.train", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        (run,) = [p for p in Path(out).glob("runs/*/*") if p.is_dir()]
        weights[name] = (run / "checkpoint" / "final" / "model.safetensors").read_bytes()
        recorded[name] = json.loads((run / "env.json").read_text())["malloc"]
    assert weights["applied"] == weights["glibc"]
    assert recorded["applied"] == {
        "MALLOC_MMAP_THRESHOLD_": str(128 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
        "MALLOC_TOP_PAD_": str(128 << 20),
    }
    assert recorded["glibc"] == GLIBC_DEFAULTS
