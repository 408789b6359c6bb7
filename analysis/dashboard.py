"""The W&B dashboard of a sweep, as code: `python -m analysis.dashboard SWEEP [results_dir=DIR] [--online [--report]]`
(`make dashboard SWEEP=<name>`).

Builds the sweep's W&B workspace with wandb-workspaces (the workspace-as-code library W&B publishes), with sections
that mirror the report (analysis/report):

    the answer    dev/f1 and dev/loss against the optimizer update, lines grouped by arm and k, mean ± standard error
                  over the seeds as a band
    cost          train/step_time (seconds per update) against the update, by arm and k
    diagnostics   diag/grad_cos (cosine of the last-replay and the full-replay gradient of one window) by arm and k
    final scores  bar plots of the final evaluation (W&B summary final/dev/f1, ...) per arm and k, mean ± s.e.

The panels come from the one metric table, experiments.metrics (a row with a `dashboard` section gets its panel).
The run set is filtered to the sweep by the W&B config key `sweep_name` and grouped by Config('arm') then
Config('k'): experiments.tracking puts these at the top of every run's W&B config. Not `sweep` or the W&B group:
wandb-workspaces (0.4.13) turns a config key named `sweep` into the run attribute `Sweep` (W&B's own sweeps), and
v2 cannot group by the run's group
(wandb-workspaces#35). A workspace has one run set for all its panels, so its curves show every arm × k group in one
panel; the W&B Report (below) has one panel grid per k, each with a run set filtered to that k and grouped by arm.

Offline (the default; no account or network): the workspace's spec (the view wandb-workspaces would save, as JSON)
goes to `<report dir>/wandb_workspace.json` (experiments.rundir.report_dir: results/report/ for the default sweep)
and the report's to `wandb_report.json` beside it, with deterministic panel ids so that a rebuild of the same sweep
writes the same files. `--online` (after `wandb login`): saves the workspace to W&B (entity: --entity, else the
account's default; project: the runs' tracking.project) and prints its URL; `--report` also saves the W&B Report:
the headline text (<report dir>/headline.md, written by `make report`) followed by the same panels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import metrics
from experiments.arms import BY_NAME
from experiments.config import split_key_value
from experiments.rundir import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, atomic_write_text, report_dir
from experiments.tracking import FINAL_PREFIX

# ---------------------------------------------------------------------------------------------------------------------
# what the dashboard shows comes from the one metric table (experiments.metrics: a row's `dashboard` names its
# sections): a curve against the update for the curve sections, a bar plot of the run summary's final/<key> for
# FINAL. A row given a section there gets its panel here.

ANSWER, COST, DIAGNOSTICS, FINAL = "The answer", "Cost", "Diagnostics", "Final scores"
SECTIONS = (ANSWER, COST, DIAGNOSTICS, FINAL)  # in the order of the report
_SECTION_OF = {"answer": ANSWER, "cost": COST, "diagnostics": DIAGNOSTICS, "final": FINAL}


def panel_metrics() -> tuple[tuple[str, str], ...]:
    """(metric key, section) of every panel, sections in report order, keys in the metric table's order."""
    return tuple((m.key, _SECTION_OF[name]) for name in _SECTION_OF for m in metrics.METRICS if name in m.dashboard)


SWEEP_KEY = "sweep_name"  # the W&B config key the run set is filtered by (see the module docstring)
GROUP_KEYS = ("arm", "k")  # the W&B config keys the runs are grouped by, outer first
X_AXIS = "update"  # every run logs it with every event; W&B's step metric for all keys (experiments.tracking)
WORKSPACE_FILE, REPORT_FILE, HEADLINE_FILE = "wandb_workspace.json", "wandb_report.json", "headline.md"
DEFAULT_PROJECT = "sam-accum"


class DashboardError(RuntimeError):
    """Bad input (no runs of the sweep, an unknown section); the message is one line. Exit code 2."""


def label(key: str) -> str:
    """A metric's name in a panel title: its label in experiments.metrics, else the key itself."""
    return metrics.label(key) if metrics.lookup(key) is not None else key


@dataclass(frozen=True)
class Design:
    """What the dashboard needs to know about a sweep: its name, its arms (report order) and k values (descending),
    and the W&B project its runs log to."""

    sweep: str
    arms: tuple[str, ...]
    ks: tuple[int, ...]
    project: str = DEFAULT_PROJECT


def design_of(results_dir: str | Path, sweep: str) -> Design:
    """The sweep's arms, k values and W&B project from its run directories (<results_dir>/runs/<sweep>/), else from
    its committed report's runs.csv (<report dir>/runs.csv); DashboardError when neither exists."""
    import pandas as pd

    from analysis.collect import arm_order, collect_runs, run_dirs
    from experiments.rundir import sweep_dir

    if sweep_dir(results_dir, sweep).is_dir() and run_dirs(results_dir, sweep):
        runs = collect_runs(results_dir, sweep)
    else:
        table = report_dir(results_dir, sweep) / "runs.csv"
        if not table.exists():
            raise DashboardError(
                f"no runs of sweep {sweep!r} under {Path(results_dir) / 'runs' / sweep} and no {table}: "
                "run the sweep (or make report) first"
            )
        runs = pd.read_csv(table)
    runs = runs[runs["arm"].notna() & runs["k"].notna()]
    if runs.empty:
        raise DashboardError(f"sweep {sweep!r}: no run says its arm and k")
    project = DEFAULT_PROJECT
    if "tracking.project" in runs and runs["tracking.project"].notna().any():
        project = str(runs["tracking.project"].dropna().iloc[0])
    ks = tuple(sorted({int(k) for k in runs["k"]}, reverse=True))
    return Design(sweep, tuple(arm_order(runs["arm"].unique())), ks, project)


# ---------------------------------------------------------------------------------------------------------------------
# building


def _stable_id(*parts: Any) -> str:
    """A panel or run-set id from what the element is, so that rebuilding writes the same spec (wandb-workspaces
    draws random ones)."""
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:11]


def _set_id(obj: Any, *parts: Any) -> Any:
    object.__setattr__(obj, "_id", _stable_id(*parts))
    return obj


def metrics_of(section: str) -> list[str]:
    if section not in SECTIONS:
        raise DashboardError(f"section {section!r} is not one of {', '.join(SECTIONS)}")
    return [key for key, where in panel_metrics() if where == section]


def _panels(section: str, where: str, *, by_arm: bool = False) -> list:
    """The panels of one section: a line plot per curve metric (x: update; mean ± standard error over the runs of a
    group), a bar plot per final metric. The groups are the run set's (arm, k), or with `by_arm` the panel's own
    grouping by arm (a report's panel grid of one k)."""
    import wandb_workspaces.reports.v2 as wr

    group = {"groupby": wr.Config("arm")} if by_arm else {}
    band = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stderr"}
    panels = []
    for key in metrics_of(section):
        if section == FINAL:
            panel = wr.BarPlot(
                title=f"final {label(key)}", metrics=[wr.SummaryMetric(FINAL_PREFIX + key)], **group, **band
            )
        else:
            panel = wr.LinePlot(
                title=label(key), x=X_AXIS, y=[key], title_x=X_AXIS, title_y=label(key), **group, **band
            )
        panels.append(_set_id(panel, where, section, key))
    return panels


def sweep_filter(sweep: str, k: int | None = None) -> str:
    """The run-set filter of the sweep (and of one k): a wandb-workspaces filter expression on W&B config keys."""
    text = f"Config('{SWEEP_KEY}') = '{sweep}'"
    return text if k is None else f"{text} and Config('k') = {int(k)}"


def build_workspace(design: Design, entity: str = ""):
    """The sweep's wandb_workspaces Workspace: the run set filtered to the sweep and grouped by arm then k, arm
    colours from experiments.arms, one section per SECTIONS entry with the panels of panel_metrics()."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    colors = {arm: BY_NAME[arm].color for arm in design.arms if arm in BY_NAME}
    sections = [
        ws.Section(name=section, is_open=True, panels=_panels(section, "workspace"))
        for section in SECTIONS
        if metrics_of(section)
    ]
    workspace = ws.Workspace(
        entity=entity,
        project=design.project,
        name=f"{design.sweep}: SAM replay under gradient accumulation",
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=X_AXIS),
        runset_settings=ws.RunsetSettings(
            filters=sweep_filter(design.sweep),
            groupby=[expr.Config(key) for key in GROUP_KEYS],
            group_colors=colors,
            pinned_columns=[f"config:{key}" for key in ("arm", "k", "seed")]
            + [f"summary:{FINAL_PREFIX}{key}" for key in metrics_of(FINAL)],
        ),
    )
    # the run set's id names the arm colours' keys; a random one would make every rebuild a different file
    object.__setattr__(workspace, "_internal_runset_id", _stable_id("workspace run set", design.sweep))
    return workspace


def build_report(design: Design, headline: str, entity: str = ""):
    """The W&B Report: the headline text, then per section its panels; the answer once per k (a panel grid whose run
    set is the sweep at that k, grouped by arm), the other sections over the whole sweep grouped by arm and k."""
    import wandb_workspaces.reports.v2 as wr

    def grid(section: str, k: int | None) -> Any:
        name = design.sweep if k is None else f"{design.sweep}, k = {k}"
        # offline the run sets name no entity/project (wandb-workspaces then serialises without an API call)
        where = {"entity": entity, "project": design.project} if entity else {}
        keys = GROUP_KEYS if k is None else ("arm",)
        runset = wr.Runset(
            name=name, filters=sweep_filter(design.sweep, k), groupby=[f"config.{key}" for key in keys], **where
        )
        _set_id(runset, "report", section, k)
        panels = _panels(section, f"report k={k}", by_arm=k is not None)
        return wr.PanelGrid(runsets=[runset], panels=panels)

    blocks: list = [wr.MarkdownBlock(text=headline)]
    for section in SECTIONS:
        if not metrics_of(section):
            continue
        blocks.append(wr.H2(text=section))
        if section == ANSWER:
            for k in design.ks:
                blocks += [wr.H3(text=f"k = {k}"), grid(section, k)]
        else:
            blocks.append(grid(section, None))
    return wr.Report(
        project=design.project,
        entity=entity,
        title=f"{design.sweep}: does the last-batch replay cost accuracy?",
        description=f"SAM × gradient accumulation, sweep {design.sweep} (built by analysis.dashboard)",
        blocks=blocks,
    )


def spec_json(obj: Any) -> str:
    """A Workspace's or a Report's spec as wandb-workspaces would send it (its internal model, by alias), as JSON."""
    model = obj._to_model()
    return json.dumps(model.model_dump(by_alias=True, exclude_none=True, mode="json"), indent=1, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep's name (its runs: <results_dir>/runs/<sweep>/)")
    parser.add_argument("settings", nargs="*", help="results_dir=DIR (default results)")
    parser.add_argument("--online", action="store_true", help="save the workspace to W&B (after wandb login)")
    parser.add_argument("--report", action="store_true", help="with --online: also save the W&B Report")
    parser.add_argument("--entity", default=None, help="W&B entity (default: the account's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    results_dir = "results"
    for item in args.settings:
        try:
            key, value = split_key_value(item)
        except ValueError:
            key, value = item, None
        if key != "results_dir" or not value:
            print(f"dashboard: error: {item!r}: the one setting is results_dir=DIR", file=sys.stderr)
            return EXIT_BAD_INPUT
        results_dir = value
    if args.report and not args.online:
        print("dashboard: error: --report saves a W&B Report: it needs --online", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        design = design_of(results_dir, args.sweep)
    except DashboardError as err:
        print(f"dashboard: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    folder = report_dir(results_dir, args.sweep)
    headline_path = folder / HEADLINE_FILE
    headline = headline_path.read_text(encoding="utf-8") if headline_path.exists() else f"# {args.sweep}\n"
    if not args.online:
        workspace, report = build_workspace(design), build_report(design, headline)
        atomic_write_text(folder / WORKSPACE_FILE, spec_json(workspace))
        atomic_write_text(folder / REPORT_FILE, spec_json(report))
        print(
            f"dashboard of {args.sweep} ({len(design.arms)} arms, k {', '.join(map(str, design.ks))}): "
            f"{folder / WORKSPACE_FILE}, {folder / REPORT_FILE} (offline; --online saves them to W&B)"
        )
        return EXIT_OK
    return _save_online(design, headline, args.entity, args.report)


def _save_online(design: Design, headline: str, entity: str | None, with_report: bool) -> int:
    from experiments.network import PROBE_TIMEOUT_S, reachable, wandb_url

    if not reachable(wandb_url()):
        print(
            f"dashboard: error: the W&B server {wandb_url()} is not reachable within {PROBE_TIMEOUT_S:.0f} s; "
            "without --online the spec is written as JSON",
            file=sys.stderr,
        )
        return EXIT_FAILED
    import wandb

    entity = entity or wandb.Api().default_entity
    workspace = build_workspace(design, entity).save()
    print(f"workspace: {workspace.url}")
    if with_report:
        report = build_report(design, headline, entity)
        report.save()
        print(f"report: {report.url}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
