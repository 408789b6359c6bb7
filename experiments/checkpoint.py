"""Resumable training state in `<run_dir>/checkpoint/resume/`: safetensors + JSON, written atomically.

    model.safetensors   the weights (safetensors.torch.save_model: handles tied weights)
    state.pt            optimizer (SAM's param groups and AdamW moments), scheduler, GradScaler, torch RNG states;
                        tensors and plain Python only, read back with torch.load(weights_only=True)
    trainer.json        progress (update, epoch, window, examples, best, last eval), Python and NumPy RNG states

The directory is written as resume.tmp and swapped in with renames; a crash between the renames leaves resume.old,
which `load_resume_state` falls back to. The data order is a function of (seed, epoch), so (epoch, window) is the
whole data position. `resume_point` says from which update a run directory can resume without loading anything
(torch, numpy and safetensors are imported inside the functions that save or load: the sweep runner asks
`resume_point` of many run directories and should not pay torch's import for it).

Data-parallel: every rank calls both functions at the same update. The weights, optimizer, scheduler and scaler are
the same on every rank (DDP keeps them so), so rank 0 writes its own; the torch RNG states (each rank draws its own
dropout masks) are gathered to rank 0 and stored per rank (`rank_rng` in state.pt), and each rank reads back its own.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

from .progress import Progress
from .rundir import atomic_write_json, resume_dirs


def _usable_resume(run_dir) -> tuple[Path, dict] | None:
    """(folder, its trainer.json) of the newest resume checkpoint whose trainer.json reads and names its update:
    checkpoint/resume, else checkpoint/resume.old (left by a save that was cut short); None if neither."""
    target, _, old = resume_dirs(Path(run_dir))
    for folder in (target, old):
        try:
            meta = json.loads((folder / "trainer.json").read_text())
            int(meta["progress"]["update"])
            return folder, meta
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def resume_point(run_dir) -> int | None:
    """The update a rerun of `run_dir` resumes from (the newest usable resume checkpoint), or None if there is none."""
    found = _usable_resume(run_dir)
    return int(found[1]["progress"]["update"]) if found is not None else None


def remove_resume_state(run_dir) -> None:
    """Delete the resume checkpoint (a finished run is never resumed; it is the size of the model and the optimizer
    state, ~260 MiB for the default MiniLM)."""
    for folder in resume_dirs(Path(run_dir)):
        shutil.rmtree(folder, ignore_errors=True)


def _rng_state(trainer) -> tuple:
    """(CPU generator state, CUDA generator state of this rank's device or None)."""
    import torch

    cuda = torch.cuda.get_rng_state(trainer.device) if trainer.device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def save_resume_state(trainer) -> Path | None:
    """Write the resume checkpoint; returns its folder (None on data-parallel ranks other than 0, which only hand
    their RNG states to rank 0)."""
    import numpy as np
    import torch
    from safetensors.torch import save_model

    dist = trainer.dist
    parallel = dist.world_size > 1
    rank_rng = dist.gather(_rng_state(trainer)) if parallel else None
    if parallel and not dist.is_main:
        return None

    target, tmp, old = resume_dirs(trainer.run_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(trainer.model, str(tmp / "model.safetensors"))
    state = {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if rank_rng is not None:
        state["rank_rng"] = [list(pair) for pair in rank_rng]
    torch.save(state, tmp / "state.pt")
    np_state = np.random.get_state()
    py_state = random.getstate()
    atomic_write_json(
        tmp / "trainer.json",
        {
            "progress": dataclasses.asdict(trainer.progress),
            "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "config_hash": trainer.tracker.summary.get("config_hash") if trainer.tracker else None,
        },
    )
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def load_resume_state(trainer) -> bool:
    """Restore everything saved by `save_resume_state`; False when there is nothing usable."""
    import numpy as np
    import torch
    from safetensors.torch import load_model

    found = _usable_resume(trainer.run_dir)  # the same choice resume_point reports
    if found is None:
        return False
    folder, meta = found
    state = torch.load(folder / "state.pt", weights_only=True, map_location="cpu")
    dist = trainer.dist
    parallel = dist.world_size > 1
    if parallel and len(state.get("rank_rng") or ()) != dist.world_size:
        return False  # not written by a run of this many processes (checked before anything is loaded)
    missing, unexpected = load_model(
        trainer.model, str(folder / "model.safetensors"), strict=True, device=str(trainer.device)
    )
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    if parallel:
        cpu_state, cuda_state = state["rank_rng"][dist.rank]
        torch.set_rng_state(cpu_state)
        if cuda_state is not None and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_state, trainer.device)
    else:
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    py = meta["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = meta["numpy_rng"]
    np.random.set_state((npr[0], np.asarray(npr[1], dtype=np.uint32), npr[2], npr[3], npr[4]))
    trainer.progress = Progress(**meta["progress"])
    return True
