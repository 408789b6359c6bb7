"""The dose report: how the last-batch replay bug's cost grows with k at a fixed window, and why.

    python -m analysis.dose results_dir=results [sweep=dose] [out=results/report-dose]

reads the runs of a fixed-window sweep (configs/sweep/dose.yaml; the layout of analysis.collect) and, when
`make report SWEEP=dose` wrote it, the sharpness section's sharpness.csv in the same report folder, and writes into
`out` (default experiments.rundir.report_dir, results/report-dose/):

    DOSE.md               the setup, the headline, Q1-Q4 and the gradient cosine with their tables and figures
    dose_headline.md      the headline alone: one sentence per question (README quotes it)
    dose_<table>.csv      gap, trend, control, micro, invariance, sharpness, grad_cos, targets, runs
    figures/dose_*.png    analysis.dose.figures

The questions (docs and configs/sweep/dose.yaml's header): Q1 the gap sam_full − bug arm against k; Q2 whether the
bug is just SAM on N/k examples (the control); Q3 m-SAM against sam_full on F1 and converged sharpness; Q4 sam_full
at k = 16 against k = 1. The parts: tables (roles and paired numbers), text (the words), figures.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.collect import CollectError, load_frames
from analysis.dose import figures, tables, text
from analysis.report import ReportError, parse_args, report_targets
from analysis.report.formatting import md_table
from experiments.rundir import report_dir

SWEEP = "dose"
USAGE = "usage: python -m analysis.dose results_dir=DIR [sweep=dose] [out=DIR]"


def _sharpness(folder: Path) -> pd.DataFrame | None:
    path = folder / "sharpness.csv"
    return pd.read_csv(path) if path.is_file() else None


def compute(runs: pd.DataFrame, curves: pd.DataFrame, sharpness: pd.DataFrame | None, targets) -> dict:
    """Every table of the report from the frames of analysis.collect: {name: DataFrame}, plus "cells" (the runs
    with their roles), "curves" (their dev F1 curves) and "n" (the window). Raises tables.DoseError."""
    cells = tables.roles(runs)
    out = dict(tables.summaries(cells))
    out["sharpness"] = tables.sharpness_table(cells, sharpness)
    out["grad_cos"] = tables.grad_cos_table(curves, cells)
    out["targets"] = tables.updates_to_target(curves, runs, cells, targets)
    out.update(cells=cells, curves=tables.dev_curves(curves, cells), n=tables.window_size(runs))
    return out


def _figure(written: dict, name: str, caption: str) -> list[str]:
    return [f"![{caption}](figures/{written[name].name})", ""] if name in written else []


def markdown(result: dict, runs: pd.DataFrame, source: str, written: dict) -> str:
    """DOSE.md from the tables of `compute` and the figures written."""
    n = result["n"]
    lines = ["# How the bug's cost grows with k: the dose sweep", "", "## Setup", ""]
    lines += text.setup_lines(result["cells"], runs, n, source)
    lines += [
        "- Pairing: runs that share a seed share the initial weights and the order of the windows; every difference "
        "is taken within a seed, with the paired t-test and its 95 % t-interval (the interval excludes 0 exactly when "
        "p < 0.05). With 2-3 seeds the tests are rough.",
        "- What the sweep cut to fit its budget: the header of configs/sweep/dose.yaml.",
        "",
        "## The answers",
        "",
        text.headline(result, n).strip(),
        "",
        "## Q1: the gap against k (sam_full at k = 1 on the same windows − the bug arm at k)",
        "",
        text.pair_table(result["gap"], ["arm", "k"], "sam_full", "bug arm"),
        "",
        "k = 1 is not a run here: with one micro-batch every replay rule is sam_full (results/report's sanity rows "
        "show them identical), so the gap there is 0 by construction. The trend: least squares of each seed's gap on "
        "log2 k (scipy.stats.linregress), slope in F1 points per doubling of k.",
        "",
    ]
    trend_rows = [
        [
            r["arm"],
            r["n"],
            text.fmt(r["slope"], ".2f", signed=True),
            f"[{text.fmt(r['slope_low'])}, {text.fmt(r['slope_high'])}]",
            text.fmt(r["intercept"], ".2f"),
            text.p_clause(r["p_value"]),
            text.fmt(r["r"], ".2f"),
        ]
        for r in result["trend"].to_dict("records")
    ]
    lines += [md_table(["arm", "points", "slope / doubling", "95 % CI", "intercept", "p", "r"], trend_rows, "lrrlrlr")]
    lines += ["", "Updates to a dev-F1 target (a run that never reaches it counts as +∞):", ""]
    lines += [text.target_table(result["targets"]), ""]
    lines += _figure(written, "gap", "gap against k")
    lines += [
        "## Q2: data equivalence (bug arm at k − sam_full on batches of N/k examples)",
        "",
        text.pair_table(result["control"], ["arm", "k", "batch"], "bug arm", "control"),
        "",
        *_figure(written, "control_curves", "learning curves against the control"),
        *_figure(written, "examples", "final F1 against examples per gradient"),
        "## Q3: m-sharpness (sam_micro with m = N/k examples per perturbation − sam_full)",
        "",
        text.pair_table(result["micro"], ["arm", "k", "m"], "sam_micro", "sam_full"),
        "",
        "Sharpness at the final weights (analysis.sharpness; λmax only where Lanczos converged, tr(H) only where its "
        "SE passes the noise rule, in both runs of a pair):",
        "",
        text.pair_table(result["sharpness"], ["arm", "k", "measure", "used"], "sam_micro", "sam_full")
        if not result["sharpness"].empty
        else "(no sharpness.csv: run `make report SWEEP=dose` first)",
        "",
        text.LITERATURE + ".",
        "",
        *_figure(written, "micro", "m-SAM against m"),
        "## Q4: invariance (sam_full at k > 1 − sam_full at k = 1)",
        "",
        text.pair_table(result["invariance"], ["arm", "k", "m"], "sam_full at k", "at k = 1"),
        "",
        "## The gradient cosine against k",
        "",
        text.cos_table(result["grad_cos"]),
        "",
        *_figure(written, "grad_cos", "gradient cosine against k"),
        "### Method note: what the cosine should be",
        "",
        text.COS_METHOD,
        "",
    ]
    return "\n".join(lines)


def build(results_dir: str | Path, sweep: str = SWEEP, out: str | Path | None = None) -> dict[str, Path]:
    """Compute and write the dose report (see the module docstring); {name: path} of what was written. Raises
    ReportError when the sweep cannot be read, tables.DoseError when its runs are not a fixed-window design."""
    folder = Path(out) if out is not None else report_dir(results_dir, sweep)
    try:
        runs, curves, source = load_frames(results_dir, sweep)
    except CollectError as err:
        raise ReportError(str(err)) from None
    targets = report_targets(results_dir, sweep).get("dev/f1", (70, 85, 95))
    sharpness = _sharpness(folder)
    result = compute(runs, curves, sharpness, targets)
    folder.mkdir(parents=True, exist_ok=True)
    written = figures.save_all(folder, result, result["cells"], result["curves"], sharpness)
    paths = {f"figure:{k}": v for k, v in written.items()}
    for name in ("gap", "trend", "control", "micro", "invariance", "sharpness", "grad_cos", "targets"):
        paths[name] = folder / f"dose_{name}.csv"
        result[name].to_csv(paths[name], index=False, lineterminator="\n")
    paths["runs"] = folder / "dose_runs.csv"
    result["cells"].to_csv(paths["runs"], index=False, lineterminator="\n")
    paths["headline"] = folder / "dose_headline.md"
    paths["headline"].write_text(text.headline(result, result["n"]), encoding="utf-8")
    paths["md"] = folder / "DOSE.md"
    paths["md"].write_text(markdown(result, runs, source, written), encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv, USAGE)
        sweep = args["sweep"] if any(a.startswith("sweep=") for a in argv) else SWEEP
        written = build(args["results_dir"], sweep, args["out"])
    except (ReportError, tables.DoseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written['md']} and {len(written)} files in all")
    return 0
