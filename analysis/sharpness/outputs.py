"""The files of `python -m analysis.sharpness`: sharpness.csv, sharpness_curves.csv, sharpness_timing.csv,
the figures and sharpness.md."""

import math
from pathlib import Path

import pandas as pd

from analysis.sharpness.figures import draw_figures
from analysis.sharpness.options import alphas
from analysis.sharpness.section import build_markdown
from analysis.sharpness.tables import summary_tables, tau_table

CSV_FIRST = [
    "run_id",
    "arm",
    "k",
    "seed",
    "train_loss",
    "dev_loss",
    "gap_subset",
    "summary_dev_loss",
    "summary_train_loss",
    "gap_summary",
    "lambda_max",
    "lambda_max_residual",
    "lambda_max_converged",
    "lambda_max_iters",
    "lambda_max_hvp",
    "trace",
    "trace_se",
    "trace_probes",
    "trace_reliable",
]
CSV_LAST = ["hessian_measured", "surface_measured", "forward", "backward", "hvp"]


def results_frame(rows: list[dict]):
    frame = pd.DataFrame(rows)
    middle = [c for c in frame.columns if c not in CSV_FIRST + CSV_LAST]
    return frame[CSV_FIRST + middle + CSV_LAST]


def curves_frame(result: dict):
    """Long format: kind (curve_1d | surface_2d | interp_train | interp_dev), run_id (a -> b for interpolation),
    direction, alpha, beta, loss."""

    opts = result["opts"]
    line = alphas(opts.curve_points, opts.curve_span)
    grid = alphas(opts.surface_points, opts.surface_span) if opts.surface_points else []
    rows = []
    for run in result["runs"]:
        c = result["curves"][run.run_id]
        base = {"run_id": run.run_id, "arm": run.arm, "k": run.k, "seed": run.seed}
        for d, values in enumerate(c["curve_1d"]):
            rows += [
                {**base, "kind": "curve_1d", "direction": d, "alpha": a, "beta": math.nan, "loss": v}
                for a, v in zip(line, values)
            ]
        if c["surface"] is not None:
            rows += [
                {**base, "kind": "surface_2d", "direction": math.nan, "alpha": a, "beta": b, "loss": v}
                for a, zrow in zip(grid, c["surface"])
                for b, v in zip(grid, zrow)
            ]
    for p in result["interp"]:
        base = {
            "run_id": f"{p['a'].run_id} -> {p['b'].run_id}",
            "arm": f"{p['a'].arm} -> {p['b'].arm}",
            "k": p["a"].k,
            "seed": p["a"].seed,
        }
        for split in ("train", "dev"):
            rows += [
                {**base, "kind": f"interp_{split}", "direction": math.nan, "alpha": a, "beta": math.nan, "loss": v}
                for a, v in zip(p["alpha"], p[split])
            ]
    return pd.DataFrame(rows, columns=["run_id", "arm", "k", "seed", "kind", "direction", "alpha", "beta", "loss"])


def write_outputs(result: dict, out_dir: Path) -> dict[str, Path]:
    """Tables, figures and sharpness.md under out_dir (experiments.rundir.report_dir unless `out` is given);
    returns {name: path}."""

    out_dir.mkdir(parents=True, exist_ok=True)
    frame = results_frame(result["rows"])
    summary, paired = summary_tables(frame, result["opts"])
    taus = tau_table(frame, result["opts"])
    figures = draw_figures(result, frame, out_dir / "figures")
    written = {
        "csv": out_dir / "sharpness.csv",
        "curves": out_dir / "sharpness_curves.csv",
        "timing": out_dir / "sharpness_timing.csv",
        "md": out_dir / "sharpness.md",
    }
    frame.to_csv(written["csv"], index=False, lineterminator="\n")
    curves_frame(result).to_csv(written["curves"], index=False, lineterminator="\n")
    pd.DataFrame(result["timing"]).to_csv(written["timing"], index=False, lineterminator="\n")
    written["md"].write_text(build_markdown(result, frame, summary, paired, taus, figures), encoding="utf-8")
    written.update({f"figure:{name}": path for name, path in figures.items()})
    return written
