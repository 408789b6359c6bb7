"""A synthetic sweep for the analysis tests: run directories written exactly as docs/CONTRACTS.md describes, with
numbers made up by a formula so the tests know what the analysis must find.

    write_run(runs_root, arm, k, seed, ...)   one run directory (config.yaml, env.json, metrics.jsonl, summary.json)
    make_sweep(results_dir, sweep, ...)       a grid of them plus sweep.json, with one failed run (no final
                                              metrics, torn last metrics line), one diverged run (NaN loss) and one
                                              run that only the manifest knows (it never wrote a directory)

    sharpness_inputs(cells, opts)             what analysis.sharpness.figures draws (the frame of sharpness.csv,
                                              the curves, the plan, the interpolation pairs), made up per run
                                              without a model

The made-up effect: final dev F1 = base(arm) − penalty(k) for sam_last and sam_last_only + seed noise, where the noise
depends on the seed and the *algorithm*, so that at k = 1 sam_last and sam_last_only are bitwise the same run as
sam_full (the built-in sanity row), and at k > 1 sam_full beats sam_last by about 3·log2(k) points and sam_last_only
by about 4·log2(k).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

REPLAY = {"adamw": "none", "sam_full": "full", "sam_last": "last", "sam_micro": "micro", "sam_last_only": "last_only"}
BASE_F1 = {"adamw": 60.0, "sam_full": 64.0, "sam_last": 64.0, "sam_micro": 65.0, "sam_last_only": 64.0}
ALGO_INDEX = {"adamw": 0, "sam_full": 1, "sam_last": 2, "sam_micro": 3, "sam_last_only": 4}
PENALTY = {"sam_last": 3.0, "sam_last_only": 4.0}  # F1 points lost per doubling of k
DEFAULT_ARMS = ("adamw", "sam_full", "sam_last", "sam_micro")  # make_sweep's grid (the tests count its runs)
TRAIN_EXAMPLES = 96
MICRO_BATCH = 4
EPOCHS = 2
GIT_SHA = "0123456789abcdef0123456789abcdef01234567"
DEVICE_NAME = "Synthetic CPU @ 2 threads"


def config_dict(arm: str, k: int, seed: int, results_dir: str, sweep: str) -> dict:
    """A small config with the real schema's key names (tests check it merges into experiments.schema.Config)."""
    sam = arm != "adamw"
    return {
        "arm": arm,
        "seed": seed,
        "results_dir": results_dir,
        "run_name": None,
        "sweep": sweep,
        "data": {
            "source": "generated",
            "train_file": None,
            "validation_file": None,
            "max_seq_length": 128,
            "doc_stride": 32,
            "metric": "squad",
            "generated": {"n_train": TRAIN_EXAMPLES, "n_dev": 24, "seed": 1234, "facts_per_context": 2},
        },
        "model": {"name_or_path": "embedded", "dropout": None},
        "optim": {
            "replay": REPLAY[arm],
            "lr": 3e-4,
            "weight_decay": 0.01,
            "betas": [0.9, 0.999],
            "rho": 0.05,
            "adaptive": False,
            "warmup_ratio": 0.1,
            "max_grad_norm": 1.0,
        },
        "train": {
            "micro_batch_size": MICRO_BATCH,
            "accumulation_steps": k,
            "epochs": EPOCHS,
            "max_updates": None,
            "precision": "fp32",
            "device": "cpu",
            "eval_every": 0,
            "log_every": 1,
        },
        "tracking": {"mode": "disabled", "project": "sam-accum", "group": sweep},
        "diagnostics": {"grad_fidelity": sam, "grad_fidelity_every": 2},
    }


def run_id_of(cfg: dict) -> str:
    blob = json.dumps({k: v for k, v in cfg.items() if k not in ("results_dir", "sweep", "tracking")}, sort_keys=True)
    return (
        f"{cfg['arm']}-k{cfg['train']['accumulation_steps']}-s{cfg['seed']}-"
        f"{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
    )


def algorithm(arm: str, k: int) -> str:
    """At k = 1 every SAM replay rule (last-batch replay, SAM on the last micro-batch alone, m-SAM) is full replay: the
    same algorithm, so the same numbers."""
    return "sam_full" if arm in (*PENALTY, "sam_micro") and k == 1 else arm


def expected_final(arm: str, k: int, seed: int) -> dict[str, float]:
    """The final metrics `write_run` writes for a completed run (the tests compare against these)."""
    algo = algorithm(arm, k)
    rng = np.random.default_rng([seed, ALGO_INDEX[algo], k])
    f1 = BASE_F1[algo] + rng.normal(0.0, 1.0)
    f1 -= PENALTY.get(algo, 0.0) * math.log2(k)
    em = f1 - 8.0 + rng.normal(0.0, 0.5)
    dev_loss = 2.6 - f1 / 50.0 + rng.normal(0.0, 0.01)
    train_loss = 0.5 + (0.1 if algo in PENALTY else 0.0) + rng.normal(0.0, 0.01)
    return {"dev/f1": float(f1), "dev/em": float(em), "dev/loss": float(dev_loss), "train/loss": float(train_loss)}


def _dump(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


@dataclass
class SyntheticRun:
    run_id: str
    path: Path | None
    arm: str
    k: int
    seed: int
    status: str
    reason: str | None
    final: dict = field(default_factory=dict)


def write_run(
    runs_root: Path,
    arm: str,
    k: int,
    seed: int,
    *,
    results_dir: str,
    sweep: str,
    status: str = "completed",
    reason: str | None = None,
    stop_at: int | None = None,
    torn_tail: bool = False,
) -> SyntheticRun:
    """One run directory under runs_root. status completed: full training with epoch and final evals; failed: stops
    after `stop_at` updates with no final metrics; diverged: the loss turns NaN at update `stop_at`."""
    cfg = config_dict(arm, k, seed, results_dir, sweep)
    run_id = run_id_of(cfg)
    path = runs_root / run_id
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)), encoding="utf-8")
    env = {
        "git": {"sha": GIT_SHA, "dirty": False},
        "python": "3.12.3",
        "packages": {"torch": "2.13.0", "transformers": "5.0.0", "pandas": "3.1.1"},
        "device": {"type": "cpu", "name": DEVICE_NAME, "threads": 2, "cuda": None},
        "argv": ["-m", "experiments.train", f"arm={arm}"],
        "started_at": "2025-01-01T00:00:00+00:00",
    }
    (path / "env.json").write_text(json.dumps(env, indent=2), encoding="utf-8")

    algo = algorithm(arm, k)
    final = expected_final(arm, k, seed)
    rng = np.random.default_rng([seed, ALGO_INDEX[algo], k, 7])
    per_epoch = TRAIN_EXAMPLES // (MICRO_BATCH * k)
    total = per_epoch * EPOCHS
    last = total if status == "completed" else min(stop_at or total // 2, total)
    sam = arm != "adamw"
    lines: list[str] = []
    step_time = (0.6 if not sam else 1.3) * k * (1.0 + 0.02 * seed)
    for update in range(1, last + 1):
        epoch = update / per_epoch
        examples = update * MICRO_BATCH * k
        loss = final["train/loss"] + 3.0 * math.exp(-update / (total / 4)) + rng.normal(0.0, 0.05)
        if status == "diverged" and update == last:
            loss = math.nan
        event = {
            "update": update,
            "epoch": epoch,
            "examples": examples,
            "time": round(update * step_time, 3),
            "train/loss": loss,
            "train/grad_norm": 1.0 + rng.random(),
            "train/lr": 3e-4 * (1 - update / total),
            "train/step_time": step_time,
        }
        if sam:
            event["train/perturbed_loss"] = loss + 0.05 if not math.isnan(loss) else loss
        lines.append(_dump(event))
        if sam and update % 2 == 0:
            cos = 1.0 if k == 1 else float(np.clip(1.0 / math.sqrt(k) + rng.normal(0.0, 0.05), -1, 1))
            lines.append(
                _dump(
                    {
                        "update": update,
                        "epoch": epoch,
                        "examples": examples,
                        "time": round(update * step_time, 3),
                        "diag/grad_cos": cos,
                        "diag/grad_norm_ratio": 1.0 if k == 1 else math.sqrt(k),
                    }
                )
            )
        if update % per_epoch == 0 and status == "completed":
            e = update // per_epoch
            frac = e / EPOCHS
            dev = {
                "dev/loss": final["dev/loss"] + 0.5 * (1 - frac),
                "dev/em": final["dev/em"] - 10 * (1 - frac),
                "dev/f1": final["dev/f1"] - 10 * (1 - frac),
                "eval/kind": "epoch",
            }
            lines.append(
                _dump(
                    {
                        "update": update,
                        "epoch": float(e),
                        "examples": examples,
                        "time": round(update * step_time + 1, 3),
                        **dev,
                    }
                )
            )
    if status == "completed":
        lines.append(
            _dump(
                {
                    "update": total,
                    "epoch": float(EPOCHS),
                    "examples": total * MICRO_BATCH * k,
                    "time": round(total * step_time + 2, 3),
                    "dev/loss": final["dev/loss"],
                    "dev/em": final["dev/em"],
                    "dev/f1": final["dev/f1"],
                    "eval/kind": "final",
                }
            )
        )
    text = "".join(line + "\n" for line in lines)
    if torn_tail:
        text += '{"update": 999, "epoch": 9.9, "train/lo'  # a write cut short by the crash
    (path / "metrics.jsonl").write_text(text, encoding="utf-8")

    summary: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "run_id": run_id,
        "arm": arm,
        "replay": REPLAY[arm],
        "config_hash": run_id.rsplit("-", 1)[1],
        "updates": last,
        "examples": last * MICRO_BATCH * k,
        "wall_time_s": round(last * step_time + 3, 3),
        "mean_step_time_s": step_time,
        "data": {
            "train_examples": TRAIN_EXAMPLES,
            "dev_examples": 24,
            "train_features": 110,
            "dev_features": 30,
            "skipped_records": 0,
        },
        "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:10:00+00:00",
    }
    if status == "completed":
        summary["final"] = {**final, "update": total, "epoch": float(EPOCHS)}
        summary["best"] = {
            "metric": "dev/f1",
            "value": final["dev/f1"],
            "update": total,
            "epoch": float(EPOCHS),
            "dev/loss": final["dev/loss"],
            "dev/em": final["dev/em"],
            "dev/f1": final["dev/f1"],
        }
    elif status == "diverged":
        summary["final"] = {"train/loss": math.nan, "update": last, "epoch": last / per_epoch}
        final = {}
    else:
        (path / "error.log").write_text(f"Traceback (most recent call last):\n{reason}\n", encoding="utf-8")
        final = {}
    (path / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True), encoding="utf-8")
    return SyntheticRun(run_id, path, arm, k, seed, status, reason, final)


@dataclass
class SyntheticSweep:
    results_dir: Path
    sweep: str
    runs: list[SyntheticRun]

    def get(self, arm: str, k: int, seed: int) -> SyntheticRun:
        return next(r for r in self.runs if (r.arm, r.k, r.seed) == (arm, k, seed))

    @property
    def not_completed(self) -> list[SyntheticRun]:
        return [r for r in self.runs if r.status != "completed"]


FAILED = ("sam_micro", 4, 2, "RuntimeError: synthetic crash in the data loader at update 5")
DIVERGED = ("adamw", 4, 1, "non-finite train/loss (nan) at update 7")
NEVER_STARTED = ("sam_micro", 1, 2, "killed (signal 9) before the run directory was written")


def make_sweep(
    results_dir: str | Path,
    sweep: str = "synth",
    arms=DEFAULT_ARMS,
    ks=(1, 4),
    seeds=(0, 1, 2),
    special: bool = True,
    manifest: bool = True,
    exclude=(),
    report: dict | None = None,
) -> SyntheticSweep:
    """The synthetic grid arms × ks × seeds under results_dir/runs/<sweep>/ plus sweep.json, less the (arm, k) cells
    in `exclude` (the default ablation has m-SAM at k = 1 only); with `report`, e.g. {"targets": {"dev/f1": [60]}},
    as the sweep runner records a sweep file's report block. With `special`, three cells are not completed runs:
    FAILED, DIVERGED and NEVER_STARTED (only in sweep.json)."""
    results_dir = Path(results_dir)
    root = results_dir / "runs" / sweep
    root.mkdir(parents=True, exist_ok=True)
    runs: list[SyntheticRun] = []
    entries = []
    for arm in arms:
        for k in ks:
            if (arm, k) in exclude:
                continue
            for seed in seeds:
                cell = (arm, k, seed)
                kwargs: dict[str, Any] = {}
                if special and cell == FAILED[:3]:
                    kwargs = dict(status="failed", reason=FAILED[3], stop_at=5, torn_tail=True)
                elif special and cell == DIVERGED[:3]:
                    kwargs = dict(status="diverged", reason=DIVERGED[3], stop_at=7)
                if special and cell == NEVER_STARTED[:3]:
                    cfg = config_dict(arm, k, seed, str(results_dir), sweep)
                    run = SyntheticRun(run_id_of(cfg), None, arm, k, seed, "failed", NEVER_STARTED[3])
                else:
                    run = write_run(root, arm, k, seed, results_dir=str(results_dir), sweep=sweep, **kwargs)
                runs.append(run)
                # the entry shape experiments.sweep writes (no k/seed fields: they are in point and overrides)
                entries.append(
                    {
                        "run_id": run.run_id,
                        "index": len(entries) + 1,
                        "arm": arm,
                        "point": {"arm": arm, "train.accumulation_steps": str(k), "seed": str(seed)},
                        "files": ["configs/default.yaml", f"configs/arm/{arm}.yaml"],
                        "overrides": [f"train.accumulation_steps={k}", f"seed={seed}", f"sweep={sweep}"],
                        "action": "run",
                        "status": run.status,
                        "reason": run.reason,
                        "exit_code": 0 if run.status == "completed" else 1,
                        "wall_time_s": None,
                        "run_dir": str(root / run.run_id),
                        "log": str(root / "logs" / f"{run.run_id}.log"),
                    }
                )
    if manifest:
        (root / "sweep.json").write_text(
            json.dumps(
                {
                    "name": sweep,
                    "sweep_file": f"configs/sweep/{sweep}.yaml",
                    "cli_overrides": [],
                    **({"report": report} if report else {}),
                    "runs": entries,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return SyntheticSweep(results_dir, sweep, runs)


# ---------------------------------------------------------------------------------------------------------------------
# the sharpness section's inputs, without a model

SHARPNESS_SCALE = {"adamw": 3.1, "sam_full": 1.0, "sam_last": 2.0, "sam_micro": 0.8, "sam_last_only": 2.6}


def sharpness_inputs(cells, opts=None):
    """(frame, result) as analysis.sharpness.measure returns them, for the completed runs of `cells` [(arm, k, seed)],
    made up by formula: a run's curvature c = scale(algorithm) · (1 + 0.1·seed) · (1 + 0.37·log2 k) sets λmax = 100 c,
    tr(H) = 1000 c, sharpness ρ²·c (average) and 2ρ²·c (worst), 1D curves c·α² and the surface c·(α² + 2β²), so
    that at k = 1 sam_last and sam_last_only have exactly sam_full's numbers. The plan is analysis.sharpness.plan's."""
    # imported here: analysis.sharpness.plan imports the QA model loader (torch), which the other helpers do not need
    from analysis.sharpness.options import SharpnessConfig, alphas, rho_key
    from analysis.sharpness.plan import RunInfo, plan_runs

    opts = opts or SharpnessConfig()
    runs = [
        RunInfo(f"{arm}-k{k}-s{seed}", Path(f"{arm}-k{k}-s{seed}"), arm, k, seed, None, {"status": "completed"})
        for arm, k, seed in cells
    ]
    plan = plan_runs(runs, opts)

    def curvature(run) -> float:
        return SHARPNESS_SCALE[algorithm(run.arm, run.k)] * (1 + 0.1 * run.seed) * (1 + 0.37 * math.log2(run.k))

    line = np.asarray(alphas(opts.curve_points, opts.curve_span))
    grid = np.asarray(alphas(opts.surface_points, opts.surface_span))
    rows, curves = [], {}
    for run in runs:
        c = curvature(run)
        row = {"run_id": run.run_id, "arm": run.arm, "k": run.k, "seed": run.seed}
        row.update(train_loss=0.1 * c, dev_loss=0.3 * c, lambda_max=100.0 * c, trace=1000.0 * c, trace_se=10.0)
        row.update(lambda_max_converged=True, hessian_measured=run.run_id in plan.hessian)
        row.update({f"avg_sharpness_rho{rho_key(r)}": r * r * c for r in opts.rhos_average})
        row.update({f"worst_sharpness_rho{rho_key(r)}": 2 * r * r * c for r in opts.rhos_worst})
        rows.append(row)
        directions = [(c * (1 + 0.05 * d) * line**2).tolist() for d in range(opts.curve_directions)]
        surface = None
        if run.run_id in plan.surface.values():
            surface = (c * (grid[:, None] ** 2 + 2 * grid[None, :] ** 2)).tolist()
        curves[run.run_id] = {"curve_1d": directions, "surface": surface}
    interp = []
    alpha = np.linspace(0.0, 1.0, opts.interp_points)
    for a, b in plan.pairs:
        ca, cb = curvature(a), curvature(b)
        # a barrier between two different models; between a model and itself the fp32 rounding of the interpolated
        # weights alone (~1e-7 relative)
        bump = 1e-7 * ca if ca == cb else 0.5
        train = (1 - alpha) * 0.1 * ca + alpha * 0.1 * cb + bump * alpha * (1 - alpha)
        interp.append({"a": a, "b": b, "alpha": alpha.tolist(), "train": train.tolist(), "dev": (3 * train).tolist()})
    frame = pd.DataFrame(rows)
    result = {"opts": opts, "runs": runs, "plan": plan, "curves": curves, "interp": interp, "rows": rows}
    return frame, result
