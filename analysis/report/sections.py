"""The markdown sections of REPORT.md and the document that joins them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from analysis.collect import arm_order
from analysis.report.formatting import (
    column_or_empty,
    distinct_values,
    fmt,
    fmt_p,
    is_missing,
    join_values,
    md_table,
    plural,
)
from analysis.report.tables import (
    METRICS,
    OPTIONAL_METRICS,
    completed_runs,
    not_completed,
)
from analysis.report.text import findings
from analysis.stats import ALPHA, TEST_NAME
from experiments.arms import COMPARISONS
from experiments.metrics import bounds, metric, number_format
from experiments.metrics import label as metric_label
from experiments.rundir import MANIFEST_FILE, read_json

FIGURE_TEXT = {
    "dev_curves": (
        "Learning curves",
        "The dev score the runs logged and the dev loss at every evaluation against "
        "the optimizer update (periodic evaluations score the fixed dev subset, the epoch-end and final "
        "ones the whole dev set). Line: mean over seeds; band: min–max over seeds. Arms with identical "
        "curves (k = 1) are drawn as one line, whose label names them all.",
    ),
    "time_to_target": (
        "Updates to reach a dev F1 target",
        "For each run, the first evaluation at which dev F1 "
        "reached the target (dots; bar: median over seeds). An open triangle is a run that never "
        "reached it, drawn at its last evaluation: it needs more updates than that. A k at which no run "
        "reached any target (the short k = 1 sanity row) has no panel; the title names it.",
    ),
    "train_loss": (
        "Training loss",
        "Clean (first-pass) training loss against the optimizer update, one panel per "
        "accumulation k. Line: mean over seeds; band: min–max over seeds. Arms with identical curves (k = 1) "
        "are drawn as one line, whose label names them all.",
    ),
    "final_scores": (
        "Final dev EM and F1",
        "Mean over seeds with a min–max bar; small dots are single seeds. Completed runs only.",
    ),
    "step_time": (
        "Time per update",
        "Mean wall time of one optimizer update (a window of k micro-batches), "
        "grouped by k with one bar per arm (mean over seeds, written above the bar); error bars span "
        "min–max over seeds.",
    ),
    "grad_cos": (
        "Gradient fidelity",
        "Cosine between the gradient the last-batch replay uses (the SAM gradient of the last "
        "micro-batch) and the full-replay SAM gradient of the same window (diag/grad_cos), against the update, "
        "measured at the weights of each SAM arm's runs (one line per arm). 1 means the bug changes nothing. "
        "k = 1 is not drawn when every value there is 1: with one micro-batch the two gradients are the same.",
    ),
}
FIGURE_MISSING = {
    "train_loss": "no train/loss events in metrics.jsonl",
    "dev_curves": "no evaluation events",
    "time_to_target": "no dev F1 evaluations of completed runs",
    "final_scores": "no completed run with final dev metrics",
    "step_time": "no completed run with mean_step_time_s in its summary",
    "grad_cos": "no diag/grad_cos events; the sweep ran with diagnostics.grad_fidelity=false",
}


# ---------------------------------------------------------------------------------------------------------------------
# the document


def _listed(runs: pd.DataFrame, key: str, empty: str = "–") -> str:
    """The distinct values of the runs' column `key`, joined ("128, 256"); `empty` when no run has one."""
    return join_values(distinct_values(column_or_empty(runs, key)), empty)


def _setup_section(runs: pd.DataFrame, sweep: str, root: Path) -> list[str]:
    lines = ["## Setup", ""]
    done = completed_runs(runs)
    arms = arm_order(runs["arm"])
    ks = [int(k) for k in distinct_values(runs["k"])]
    seeds = [int(s) for s in distinct_values(runs["seed"])]
    cell_sizes = runs.groupby(["arm", "k"]).size()
    per_cell = join_values([int(v) for v in sorted(set(cell_sizes.tolist()))])
    items = [
        ("Sweep", f"`{sweep}` ({plural(len(runs), 'run')} in `{root}`)"),
        ("Model", join_values([f"`{v}`" for v in distinct_values(column_or_empty(runs, "model.name_or_path"))])),
    ]
    sources = distinct_values(column_or_empty(runs, "data.source"))
    data_bits = [f"source {join_values(sources)}"]
    if "generated" in sources:
        data_bits.append(
            f"generated set: {_listed(runs, 'data.generated.n_train')} train / "
            f"{_listed(runs, 'data.generated.n_dev')} dev questions"
        )
    for key in ("data.train_file", "data.validation_file", "data.hub_path"):
        vals = distinct_values(column_or_empty(runs, key))
        if vals:
            data_bits.append(f"{key.split('.')[-1]}: {join_values(vals)}")
    data_bits.append(
        f"max_seq_length {_listed(runs, 'data.max_seq_length')}, doc_stride {_listed(runs, 'data.doc_stride')}"
    )
    stats = [
        (label, distinct_values(column_or_empty(runs, f"data_stats.{key}")))
        for label, key in (
            ("train examples", "train_examples"),
            ("train features", "train_features"),
            ("dev examples", "dev_examples"),
            ("dev features", "dev_features"),
        )
    ]
    if any(vals for _, vals in stats):
        data_bits.append("; ".join(f"{label} {join_values([int(v) for v in vals])}" for label, vals in stats if vals))
    items.append(("Data", "; ".join(data_bits)))
    items.append(
        (
            "Grid",
            f"{plural(len(arms), 'arm')} ({join_values(arms)}) × {plural(len(ks), 'accumulation value')} "
            f"(k = {join_values(ks)}) × {plural(len(seeds), 'seed')} ({join_values(seeds)}); "
            f"runs per cell: {per_cell}",
        )
    )
    mb = distinct_values(column_or_empty(runs, "train.micro_batch_size"))
    budget = [
        f"epochs {_listed(runs, 'train.epochs')}",
        f"max_updates {_listed(runs, 'train.max_updates', empty='none (all epochs)')}",
        f"micro-batch {join_values(mb)} (an update sees k × micro-batch examples)",
    ]
    if len(done) and "updates" in done.columns:
        per_k = done.groupby("k")["updates"].agg(["min", "max"])
        budget.append(
            "updates done per run: "
            + ", ".join(
                f"k={int(k)}: {int(r['min'])}" + (f"–{int(r['max'])}" if r["max"] != r["min"] else "")
                for k, r in per_k.iterrows()
                if not is_missing(r["min"])
            )
        )
    items.append(("Budget", "; ".join(budget)))
    optim = [
        f"{key.split('.')[-1]} {_listed(runs, key)}"
        for key in ("optim.lr", "optim.rho", "optim.weight_decay", "optim.warmup_ratio", "optim.max_grad_norm")
        if key in runs.columns
    ]
    items.append(("Optimizer", "AdamW base; " + "; ".join(optim)))
    devices = []
    as_text = lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)  # noqa: E731
    for name, dtype, threads in sorted(
        set(
            zip(
                column_or_empty(runs, "env.device.name").map(as_text),
                column_or_empty(runs, "env.device.type").map(as_text),
                column_or_empty(runs, "env.device.threads").map(as_text),
            )
        )
    ):
        if name in ("None", "nan"):
            continue
        devices.append(
            f"{name} ({dtype}"
            + (f", {threads} thread{'' if threads == '1' else 's'}" if threads not in ("None", "nan") else "")
            + ")"
        )
    items.append(("Hardware", join_values(devices, empty="unknown (no env.json)")))
    compute = _compute_floor_text(root)
    if compute:
        items.append(("Compute", compute))
    shas = []
    for sha, dirty in sorted(
        set(zip(column_or_empty(runs, "env.git.sha").map(str), column_or_empty(runs, "env.git.dirty").map(str)))
    ):
        if sha in ("None", "nan"):
            continue
        shas.append(f"`{sha[:12]}`" + (" (uncommitted changes)" if dirty == "True" else ""))
    items.append(("Code", join_values(shas, empty="unknown")))
    pkgs = [
        f"{name} {_listed(runs, f'env.packages.{name}')}"
        for name in ("torch", "transformers")
        if f"env.packages.{name}" in runs.columns
    ]
    if "env.python" in runs.columns:
        pkgs.append(f"python {join_values(distinct_values(runs['env.python']))}")
    if pkgs:
        items.append(("Versions", "; ".join(pkgs)))
    lines += [f"- **{label}:** {text}" for label, text in items]
    varying = _varying_keys(runs)
    if varying:
        lines += ["", "Other config keys that differ between runs:", ""]
        lines += [f"- `{key}`: {join_values(values)}" for key, values in varying]
    lines.append("")
    return lines


_GRID_KEYS = {
    "arm",
    "seed",
    "optim.replay",
    "train.accumulation_steps",
    "run_name",
    "results_dir",
    "sweep",
    "diagnostics.grad_fidelity",
}


def _compute_floor_text(root: Path) -> str | None:
    """The sweep's last call that trained runs against its compute floor, as experiments.sweep recorded it in
    sweep.json (only when every run it started trained from scratch to completion on one CPU thread); None when
    there is no such record."""
    manifest = read_json(root / MANIFEST_FILE)
    floor = manifest.get("compute") if isinstance(manifest, dict) else None
    if not isinstance(floor, dict) or not floor.get("floor_s"):
        return None
    return (
        f"**{floor['ratio']:.2f}× the compute floor**: the last `experiments.sweep` call that trained runs took "
        f"{floor['wall_s'] / 60:.1f} min for {plural(int(floor['runs']), 'run')} on {floor['jobs']} one-thread "
        f"slots, against a floor of {floor['floor_s'] / 60:.1f} min ({floor['literal_example_passes']:,.0f} literal "
        f"example-passes, {floor['flop'] / 1e12:.1f} TFLOP, at the {floor['peak_gflops']:.1f} GFLOP/s single-thread "
        f"sgemm peak measured at its end; evaluation, diagnostics and start-up count as overhead, replay shortcuts "
        f"as gain)"
    )


def _varying_keys(runs: pd.DataFrame) -> list[tuple[str, list]]:
    out = []
    config_cols = [
        c
        for c in runs.columns
        if "." in c and c.split(".")[0] in ("data", "model", "optim", "train", "eval", "tracking", "diagnostics")
    ]
    for column in sorted(set(config_cols) - _GRID_KEYS):
        if column.startswith("tracking."):
            continue
        values = distinct_values(runs[column].map(lambda v: v if not isinstance(v, (list, tuple)) else str(v)))
        if len(values) > 1:
            out.append((column, values))
    return out


def _clip(value: float, low: float, high: float) -> float:
    return value if is_missing(value) else min(max(value, low), high)


def _results_section(summary: pd.DataFrame) -> list[str]:
    lines = [
        "## Results",
        "",
        "Final metrics of completed runs per arm and accumulation k: mean ± standard deviation over seeds, "
        "and the 95% Student-t confidence interval of the mean (mean ± t₀.₉₇₅,ₙ₋₁·s/√n; none for n = 1), "
        "cut to the metric's range (scores 0–100, losses ≥ 0). `runs` counts the cell's runs in any status, "
        "`n` the completed ones.",
        "",
    ]
    for key in METRICS + OPTIONAL_METRICS:
        table = summary[summary["metric"] == key]
        if table.empty:
            continue
        row, spec = metric(key), number_format(key)
        lines += [f"### Final {row.label}" + (f" ({row.better})" if row.better else ""), ""]
        low, high = bounds(key)
        rows = [
            (
                r.arm,
                r.k,
                r.runs,
                r.n,
                fmt(r.mean, spec) + ("" if is_missing(r.std) else f" ± {fmt(r.std, spec)}"),
                f"[{fmt(_clip(r.ci_low, low, high), spec)}, {fmt(_clip(r.ci_high, low, high), spec)}]",
            )
            for r in table.itertuples()
        ]
        lines += [md_table(["arm", "k", "runs", "n", "mean ± std", "95% CI"], rows, "lrrrrr"), ""]
    return lines


def _paired_section(paired: pd.DataFrame) -> list[str]:
    lines = [
        "## Paired differences",
        "",
        "Runs with the same seed share data order and initialisation, so each comparison a − b is taken seed "
        f"by seed (completed pairs only). One test per row, declared in advance: the {TEST_NAME} on the per-seed "
        f"differences (two-sided, level {ALPHA:g}); the 95% CI is its own t-interval of the mean difference, "
        "mean ± t₀.₉₇₅,ₙ₋₁·s/√n, so it excludes 0 exactly when p < 0.05. A verdict names the better arm on a "
        "score, the lower loss on a loss. For the losses a negative difference means a has the lower loss.",
        "",
    ]
    if paired.empty:
        return lines + ["No comparison possible: the sweep lacks the arms to compare.", ""]
    for a, b, what in COMPARISONS:
        block = paired[(paired["a"] == a) & (paired["b"] == b)]
        if block.empty:
            continue
        lines += [f"### {a} − {b} ({what})", ""]
        rows = []
        for r in block.itertuples():
            spec = number_format(r.metric)
            rows.append(
                (
                    metric_label(r.metric),
                    r.k,
                    r.n,
                    fmt(r.mean_diff, spec, signed=True),
                    f"[{fmt(r.ci_low, spec, signed=True)}, {fmt(r.ci_high, spec, signed=True)}]",
                    fmt_p(r.p_value),
                    r.verdict,
                )
            )
        lines += [md_table(["metric", "k", "n", "mean diff", "95% CI", "p", "verdict"], rows, "lrrrrrl"), ""]
    return lines


def _sanity_section(sanity: pd.DataFrame) -> list[str]:
    lines = [
        "## Sanity check: k = 1",
        "",
        "With one micro-batch per update, full replay, last-batch replay, the Trainer pattern (last_only) and "
        "m-SAM run the same algorithm, so each of sam_last, sam_last_only and sam_micro must give the numbers of "
        "sam_full seed by seed: exactly for F1 and EM, within the tolerance for losses.",
        "",
    ]
    if sanity.empty or sanity["passed"].isna().all():
        return lines + ["Not checked: the sweep has no seed with completed sam_full and sam_last runs at k = 1.", ""]
    rows = []
    for r in sanity.itertuples():
        state = "–" if r.passed is None or is_missing(r.passed) else ("pass" if r.passed else "FAIL")
        rows.append(
            (
                f"{r.a} = {r.b}",
                r.metric,
                r.n,
                r.pairs or "–",
                fmt(r.max_abs_diff, ".3g"),
                "exact" if r.tol == 0 else f"≤ {r.tol:g}",
                state,
            )
        )
    lines += [
        md_table(["arms", "metric", "seeds", "seed list", "max abs diff", "required", "equal?"], rows, "llrlrll"),
        "",
    ]
    return lines


# said under the step-time figure only when it left runs out (plots.figure_step_time drops them)
SHORTCUT_NOTE = " Runs with optim.replay_shortcut=true are left out: their time is not their loop's."


def _figures_section(figures: dict[str, Path | None], out_dir: Path, shortcut_runs: bool = False) -> list[str]:
    lines = ["## Figures", ""]
    skipped = []
    for name, path in figures.items():
        title, caption = FIGURE_TEXT[name]
        if name == "step_time" and shortcut_runs:
            caption += SHORTCUT_NOTE
        if path is None:
            skipped.append(f"- {title}: not drawn ({FIGURE_MISSING[name]}).")
            continue
        rel = path.relative_to(out_dir).as_posix()
        lines += [f"### {title}", "", f"![{title}]({rel})", "", caption, ""]
    if skipped:
        lines += ["Figures left out:", "", *skipped, ""]
    return lines


def _failures_section(rest: pd.DataFrame) -> list[str]:
    lines = ["## Failed, diverged and unfinished runs", ""]
    if rest.empty:
        return lines + ["None: every run completed.", ""]
    lines += ["These runs are not in the tables above (they have no final metrics to compare).", ""]
    rows = []
    for r in rest.itertuples():
        reason = "(no reason recorded)" if is_missing(r.reason) else str(r.reason).strip().splitlines()[0][:300]
        rows.append((f"`{r.run_id}`", r.arm, r.k, r.seed, r.status, reason))
    lines += [md_table(["run", "arm", "k", "seed", "status", "reason"], rows, "llrrll"), ""]
    return lines


def _demote_headings(text: str) -> str:
    """Shift every heading down one level (outside code fences), so a document's `#` title nests under `##`."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def find_sharpness(out_dir: Path) -> Path | None:
    """The sharpness section analysis.sharpness wrote for this report: `out_dir/sharpness.md` (never another sweep's:
    a report of sweep `foo` once embedded the default sweep's section from results/report/)."""
    path = out_dir / "sharpness.md"
    return path if path.is_file() else None


def _sharpness_section(path: Path | None) -> list[str]:
    """sharpness.md (written into the report's own folder, so its relative links work as they are) as a section of
    the report: its top heading becomes a level-2 heading (the others follow), or a "## Sharpness" heading is added
    when it has none."""
    if path is None:
        return []
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        return []
    if text.startswith("# "):
        text = _demote_headings(text)
    elif not text.startswith("## "):
        text = "## Sharpness\n\n" + text
    return [text, ""]


def build_markdown(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    sweep: str,
    root: Path,
    out_dir: Path,
    figures: dict[str, Path | None],
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    sanity: pd.DataFrame,
    sharpness: Path | None,
    cells: pd.DataFrame,
    first: list[str],
) -> str:
    """REPORT.md; `cells` is target_summary() of the runs, `first` the headline section (`headline`)."""
    lines = [
        f"# SAM under gradient accumulation — sweep `{sweep}`",
        "",
        "Generated by `python -m analysis.report` from the run directories; every number and every finding "
        "below is computed from them.",
        "",
    ]
    lines += first
    lines += ["## Findings", ""]
    lines += [f"- {text}" for text in findings(runs, curves, paired)]
    lines.append("")
    lines += _setup_section(runs, sweep, root)
    lines += _results_section(summary)
    lines += _targets_section(cells)
    lines += _paired_section(paired)
    lines += _sanity_section(sanity)
    literal = column_or_empty(runs, "literal_cost")
    lines += _figures_section(figures, out_dir, shortcut_runs=bool(literal.eq(False).any()))
    lines += _failures_section(not_completed(runs))
    lines += _sharpness_section(sharpness)
    return "\n".join(lines).rstrip() + "\n"


def _targets_section(cells: pd.DataFrame) -> list[str]:
    lines = [
        "## Updates to target",
        "",
        "The first update at which a run's dev metric reached each target (dev F1 ≥ target, dev loss ≤ target); "
        "a run that never reached it counts as +∞ (right-censored: every run has the same budget). Median over "
        "seeds with the distribution-free order-statistic interval [x₍ⱼ₎, x₍ₙ₊₁₋ⱼ₎] and its coverage (below "
        "95 % with 5 or fewer seeds); examples and training seconds (the sum of train/step_time) at the median. "
        "Per-run values: `time_to_target.csv`.",
        "",
    ]
    if cells.empty:
        return lines + ["No evaluation events of completed runs.", ""]
    rows = []
    for r in cells.itertuples():
        ends = ["∞" if math.isinf(end) else f"{end:.0f}" for end in (r.ci_low, r.ci_high)]
        # one seed (coverage 0): no interval to give
        interval = f"[{ends[0]}, {ends[1]}] ({100 * r.ci_coverage:.0f} %)" if r.ci_coverage > 0 else "–"
        median = f"> {r.last_update}" if r.median_censored else f"{r.median_update:.0f}"
        examples = "–" if math.isinf(r.median_examples) else f"{r.median_examples:.0f}"
        seconds = "–" if math.isinf(r.median_seconds) or is_missing(r.median_seconds) else f"{r.median_seconds:.0f}"
        rows.append(
            (r.target_metric, f"{r.target:g}", r.arm, r.k, f"{r.reached}/{r.n}", median, interval, examples, seconds)
        )
    lines += [
        md_table(
            ["metric", "target", "arm", "k", "reached", "median updates", "interval", "examples", "train s"],
            rows,
            "lrlrrrrrr",
        ),
        "",
    ]
    return lines
