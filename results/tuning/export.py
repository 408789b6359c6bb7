"""Export the tuning sweeps' dev F1 curves.

Run from the repository root: python results/tuning/export.py RESULTS_DIR."""

import sys

import pandas as pd

from analysis.collect import collect_curves, collect_runs

KEYS = {
    "optim.lr": "lr",
    "optim.rho": "rho",
    "data.generated.n_train": "n_train",
    "data.generated.facts_per_context": "facts_per_context",
    "train.micro_batch_size": "micro_batch_size",
    "train.accumulation_steps": "k",
    "train.max_updates": "max_updates",
}
frames = []
for sweep in ("tuning1", "tuning2", "tuning3", "tuning4"):
    runs = collect_runs(sys.argv[1], sweep)
    curves = collect_curves(sys.argv[1], sweep, runs)
    f1 = curves[curves["metric"] == "dev/f1"][["run_id", "update", "eval_kind", "value"]].rename(
        columns={"value": "dev_f1"}
    )
    cols = [c for c in KEYS if c in runs.columns and c != "train.accumulation_steps"]
    meta = runs[["run_id", "arm", "status", "k", *cols]].rename(columns=KEYS)
    frames.append(meta.merge(f1, on="run_id").assign(sweep=sweep))
out = pd.concat(frames, ignore_index=True)
out = out[
    [
        "sweep",
        "run_id",
        "arm",
        "status",
        "lr",
        "rho",
        "n_train",
        "facts_per_context",
        "micro_batch_size",
        "k",
        "max_updates",
        "update",
        "eval_kind",
        "dev_f1",
    ]
].sort_values(["sweep", "run_id", "update"])
out["dev_f1"] = out["dev_f1"].round(4)
out.to_csv("results/tuning/curves.csv", index=False)
print(out.groupby(["sweep", "run_id"]).agg(lr=("lr", "first"), n=("update", "size"), last=("update", "max")))
