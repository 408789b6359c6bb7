"""The report of a sweep: numbers, figures and findings drawn from its run directories.

    python -m analysis.report results_dir=results sweep=ablation [out=results/report]

reads `<results_dir>/runs/<sweep>/` (see analysis.collect) and writes into `out` (default
`experiments.rundir.report_dir`: `<results_dir>/report/` for the default sweep `ablation`, else `report-<sweep>/`):

    REPORT.md       setup, result tables, paired differences, the k = 1 sanity row, figures, failed and diverged
                    runs, and findings generated from the numbers (no claim is written in advance)
    REPORT.html     the same, self-contained: figures embedded as base64 PNG, tables as HTML
    summary.csv     mean, std and 95% t CI per metric × arm × k (completed runs)
    paired.csv      paired differences between arms per metric × k (paired t-test, its t-interval, verdict)
    sanity.csv      the k = 1 equality checks of sam_full against sam_last, sam_last_only and sam_micro
    runs.csv        one line per run: grid cell, status, reason, final metrics, time
    figures/*.png   the figures (analysis.plots)

If `out/sharpness.md` exists (written by analysis.sharpness), it becomes the report's sharpness section, with its
images embedded in the HTML. The output depends only on the run files: no clock, no randomness (the no-training floor
is computed on the dev set that a run's config.yaml rebuilds, analysis.baseline). Bad arguments and a missing sweep
folder are one-line errors with exit status 2.

This module collects, computes and writes (build_report) and is the command line (parse_args, main; __main__.py runs
it). The parts: formatting (numbers, markdown tables), tables (summary, paired, sanity), text (findings, the answer,
the headline), sections (the markdown sections and REPORT.md), html (REPORT.md → REPORT.html).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.baseline import BaselineError, no_training_floor
from analysis.collect import (
    REPORT_CURVE_METRICS,
    CollectError,
    collect_curves,
    collect_runs,
)
from analysis.report.html import markdown_to_html
from analysis.report.sections import build_markdown, find_sharpness
from analysis.report.tables import paired_table, primary_metric, reported_metrics, sanity_table, summary_table
from analysis.report.text import headline
from analysis.targets import DEFAULT_TARGETS, target_summary, time_to_target
from experiments.config import is_path_name, split_key_value
from experiments.rundir import DEFAULT_SWEEP, MANIFEST_FILE, read_json, report_dir, sweep_dir

KNOWN_KEYS = ("results_dir", "sweep", "out")
USAGE = "usage: python -m analysis.report results_dir=DIR sweep=NAME [out=DIR/report or DIR/report-NAME]"


class ReportError(RuntimeError):
    """A problem with the arguments or the sweep that stops the report; the message is one line."""


# ---------------------------------------------------------------------------------------------------------------------
# entry points


def _runs_csv(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per run: enough for every table and figure of the report without the run directories (the notebook
    reads it on a clone that has the committed report but no raw runs)."""
    columns = [
        "run_id",
        "arm",
        "replay",
        "k",
        "seed",
        "status",
        "reason",
        "final.dev/f1",
        "final.dev/em",
        "final.dev/loss",
        "final.train/loss",
    ]
    columns += sorted(c for c in runs.columns if c.startswith("final.dev/") and c not in columns)
    columns += ["updates", "examples", "wall_time_s", "mean_step_time_s", "time.eval_share", "git_sha", "device"]
    return runs.reindex(columns=columns)


TARGET_CSV_COLUMNS = ["arm", "k", "seed", "target_metric", "target", "update", "examples", "seconds", "reached"]


def report_targets(results_dir: str | Path, sweep: str, metric: str = "dev/f1") -> dict:
    """The dev-metric targets of the updates-to-target tables: the sweep file's `report.targets` as sweep.json
    recorded it; without the run directories (a fresh clone) the ones the sweep's report used (its
    time_to_target.csv); else analysis.targets.DEFAULT_TARGETS, on `metric` (the primary score: dev/rouge_w for
    KLUE-MRC runs)."""
    manifest = read_json(sweep_dir(results_dir, sweep) / MANIFEST_FILE, warn=True)
    if isinstance(manifest, dict) and isinstance(manifest.get("report"), dict) and manifest["report"].get("targets"):
        return manifest["report"]["targets"]
    used = report_dir(results_dir, sweep) / "time_to_target.csv"
    if not sweep_dir(results_dir, sweep).is_dir() and used.is_file():
        table = pd.read_csv(used)
        recorded = {
            name: sorted(group["target"].astype(float).unique()) for name, group in table.groupby("target_metric")
        }
        if recorded:
            return recorded
    return {metric: DEFAULT_TARGETS["dev/f1"]}  # the F1 targets, on the primary score


def build_report(results_dir: str | Path, sweep: str, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Collect, compute, draw and write the report of one sweep; returns {name: path} of what was written.
    Raises ReportError (one line) when the sweep folder is missing or holds no runs."""
    results_dir = Path(results_dir)
    root = sweep_dir(results_dir, sweep)
    out_dir = Path(out_dir) if out_dir is not None else report_dir(results_dir, sweep)
    try:
        runs = collect_runs(results_dir, sweep)
    except CollectError as err:
        raise ReportError(str(err)) from None
    if runs.empty:
        raise ReportError(f"no runs in {str(root)!r} (no folder with a summary.json or config.yaml, no sweep.json)")
    curves = collect_curves(results_dir, sweep, runs)
    to_target = time_to_target(curves, runs, report_targets(results_dir, sweep, primary_metric(runs)))
    cells = target_summary(to_target)

    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    for name in plots.FIGURES.values():  # a figure that is no longer drawn must not linger from an older report
        (fig_dir / name).unlink(missing_ok=True)
    try:  # the no-training floor on the sweep's own dev set: the headline's and the learning curves' reference
        floor, floor_error = no_training_floor(runs), ""
    except BaselineError as err:
        floor, floor_error = None, str(err)
    baseline = floor.score if floor is not None and floor.metric == primary_metric(runs) else None
    figures = plots.plot_all(runs, curves, fig_dir, targets=to_target, baseline=baseline)

    summary = summary_table(runs, reported_metrics(runs))
    paired = paired_table(runs)
    sanity = sanity_table(runs, curves)
    sharpness = find_sharpness(out_dir)
    first = headline(runs, paired, sanity, cells, floor, floor_error)
    md = build_markdown(runs, curves, sweep, root, out_dir, figures, summary, paired, sanity, sharpness, cells, first)

    written = {}
    written["md"] = out_dir / "REPORT.md"
    written["md"].write_text(md, encoding="utf-8")
    written["html"] = out_dir / "REPORT.html"
    written["html"].write_text(
        markdown_to_html(md, out_dir, title=f"SAM accumulation report: {sweep}"), encoding="utf-8"
    )
    written["headline"] = out_dir / "headline.md"
    written["headline"].write_text("\n".join(first).rstrip() + "\n", encoding="utf-8")
    frames = (
        ("summary", summary),
        ("paired", paired),
        ("sanity", sanity),
        ("runs", _runs_csv(runs)),
        ("time_to_target", to_target[TARGET_CSV_COLUMNS]),
        ("time_to_target_summary", cells),
        ("curves", curves[curves["metric"].isin(REPORT_CURVE_METRICS)]),
    )
    for name, frame in frames:
        written[name] = out_dir / f"{name}.csv"
        frame.to_csv(written[name], index=False, lineterminator="\n")
    for name, path in figures.items():
        if path is not None:
            written[f"figure:{name}"] = path
    return written


def parse_args(argv: Sequence[str], usage: str = USAGE) -> dict[str, str]:
    """key=value arguments (results_dir, sweep, out) → {key: value}; ReportError for a malformed or unknown one,
    quoting `usage` (the calling command's)."""
    args = {"results_dir": "results", "sweep": DEFAULT_SWEEP, "out": None}
    for arg in argv:
        try:
            key, value = split_key_value(arg)
        except ValueError:
            raise ReportError(f"argument {arg!r} must look like key=value; {usage}") from None
        if key not in KNOWN_KEYS:
            raise ReportError(f"unknown key {key!r}; known keys: {', '.join(KNOWN_KEYS)}")
        if not value:
            raise ReportError(f"{key} needs a value ({key}=...)")
        if key == "sweep" and not is_path_name(value):  # a folder under runs/ and in report-<sweep>: one name
            raise ReportError(f"sweep={value!r} must be one plain name of letters, digits, . _ - (not . or ..)")
        args[key] = value
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        written = build_report(args["results_dir"], args["sweep"], args["out"])
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name in ("md", "html", "summary", "paired"):
        print(f"wrote {written[name]}")
    figures = [p for n, p in written.items() if n.startswith("figure:")]
    print(f"wrote {len(figures)} figures to {written['md'].parent / 'figures'}")
    return 0
