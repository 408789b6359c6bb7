"""Upload the offline W&B runs under a results folder: `python -m experiments.sync [RESULTS_DIR]` (`make sync`).

Finds every `wandb/offline-run-*` folder under RESULTS_DIR/runs (default results), probes the W&B server first
(WANDB_BASE_URL, else https://api.wandb.ai; at most a few seconds, see experiments.network) and only then runs
`wandb sync` on them, so a machine without network gets one line saying so instead of a silent hang. Exit codes:
0 uploaded (or nothing to upload), 1 the server is not reachable (the runs stay where they are), otherwise
`wandb sync`'s own. The runs need `wandb login` (or WANDB_API_KEY) once; `wandb sync` asks for it when missing.

One run directory uploads as one W&B run with each update once: a run directory that holds several offline folders
(a run resumed before experiments.tracking replayed the history on resume; each folder holds a part, all under one id,
and `wandb sync` of them all keeps one part: wandb#3841, #5865) is first rebuilt from its metrics.jsonl into a single
offline folder (experiments.tracking.rebuild_wandb_run; the old folders are renamed retired-offline-run-*, which this
never uploads). A run still running is left as it is. This happens before the network check: it needs none.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .network import PROBE_TIMEOUT_S, reachable, wandb_url
from .rundir import RUNNING, read_summary, runs_root
from .tracking import OFFLINE_RUN_GLOB, offline_wandb_runs, rebuild_wandb_run

USAGE = (
    "usage: python -m experiments.sync [RESULTS_DIR]   (default: results; uploads RESULTS_DIR/runs/**/offline-run-*)"
)


def offline_runs(results_dir: str | Path) -> list[Path]:
    """The offline W&B run folders under results_dir/runs, sorted (retired ones are named otherwise: not listed)."""
    root = runs_root(results_dir)
    return sorted(p for p in root.rglob(OFFLINE_RUN_GLOB) if p.is_dir()) if root.is_dir() else []


def merge_split_runs(results_dir: str | Path) -> list[Path]:
    """Rebuild every finished run directory under results_dir/runs that holds more than one offline W&B folder into
    one (see the module docstring); returns the run directories rebuilt."""
    run_dirs = sorted({p.parent.parent for p in offline_runs(results_dir)})
    rebuilt = []
    for run_dir in run_dirs:
        if len(offline_wandb_runs(run_dir)) < 2 or (read_summary(run_dir) or {}).get("status") == RUNNING:
            continue
        folder = rebuild_wandb_run(run_dir)
        print(f"rebuilt {run_dir}: one W&B run from metrics.jsonl ({folder.name})", flush=True)
        rebuilt.append(run_dir)
    return rebuilt


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1:
        print(f"error: one results folder at most\n{USAGE}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    results = args[0] if args else "results"
    merge_split_runs(results)
    runs = offline_runs(results)
    if not runs:
        print(f"no offline W&B runs under {runs_root(results)}")
        return 0
    url = wandb_url()
    if not reachable(url):
        print(
            f"error: the W&B server {url} is not reachable within {PROBE_TIMEOUT_S:.0f} s, so nothing was uploaded; "
            f"the {len(runs)} offline runs stay under {runs_root(results)}: run `make sync` again with network "
            f"(or set WANDB_BASE_URL to your W&B server)",
            file=sys.stderr,
        )
        return 1
    print(f"uploading {len(runs)} offline W&B runs to {url}", flush=True)
    return subprocess.call([sys.executable, "-m", "wandb", "sync", *map(str, runs)])


if __name__ == "__main__":
    sys.exit(main())
