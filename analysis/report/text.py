"""The report's prose generated from its tables: the findings, the answer to the question and the headline."""

from __future__ import annotations

import math

import pandas as pd

from analysis.collect import arm_order
from analysis.report.formatting import (
    distinct_values,
    fmt,
    is_missing,
    md_table,
    p_clause,
    plural,
)
from analysis.report.tables import (
    HIGHER_IS_BETTER,
    METRICS,
    completed_runs,
    primary_metric,
    table_format,
    table_label,
)
from analysis.stats import (
    ci_and_test_disagree,
    metric_label,
    metric_short,
)
from analysis.targets import cost_ratio
from experiments.arms import BASELINE, BUGGY, COMPARISONS, CORRECT
from experiments.rundir import COMPLETED

# ---------------------------------------------------------------------------------------------------------------------
# findings: sentences generated from the tables


def _direction_text(a: str, b: str, metric: str, diff: float) -> str:
    label = table_label(metric)
    higher = diff > 0
    better = higher == HIGHER_IS_BETTER.get(metric, True)
    if (a, b) == (CORRECT, BUGGY):
        if better:
            hurt = "costs" if HIGHER_IS_BETTER.get(metric, True) else "raises"
            return f"replaying only the last micro-batch {hurt} {label}"
        return f"the last-batch replay comes out better on {label} here, against the expectation that it hurts"
    word = "higher" if higher else "lower"
    quality = "better" if better else "worse"
    return f"{a} has {word} {label} than {b} ({quality})"


def _pair_sentence(row: pd.Series) -> str:
    metric, spec = row["metric"], table_format(row["metric"])
    head = (
        f"At k={row['k']}, {row['a']} − {row['b']} {table_label(metric)} = {fmt(row['mean_diff'], spec, signed=True)}"
    )
    if row["n"] < 2:
        return f"{head} from n={row['n']} pair(s): too few seeds for a CI."
    ci = f"[95% CI {fmt(row['ci_low'], spec, signed=True)}, {fmt(row['ci_high'], spec, signed=True)}]"
    stats_text = f"{ci}, n={row['n']} seeds, paired t {p_clause(row['p_value']).replace(' = ', '=')}"
    if row["ci_low"] > 0 or row["ci_high"] < 0:
        text = f"{head} {stats_text}: {_direction_text(row['a'], row['b'], metric, row['mean_diff'])}."
    else:
        text = f"{head} {stats_text}: no significant difference (CI spans 0)."
    if ci_and_test_disagree(row["ci_low"], row["ci_high"], float(row["p_value"])):
        text += " The bootstrap CI and the t-test disagree at the 5% level" + (
            " (a percentile bootstrap over so few seeds is too narrow)." if row["n"] < 5 else "."
        )
    return text


def findings(runs: pd.DataFrame, curves: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """The findings after the answer (see `answer`), one sentence (or a few) each, all derived from the numbers
    passed in; how many runs completed comes last."""
    out: list[str] = []
    total = len(runs)
    done = completed_runs(runs)
    counts = runs["status"].value_counts()
    status: list[str] = []  # how many runs completed: said last, after the findings about the question
    if len(done) == total:
        status.append(f"All {plural(total, 'run')} completed.")
    elif len(done) == 0:
        parts = ", ".join(f"{counts[s]} {s}" for s in sorted(counts.index))
        status.append(
            f"No run completed ({parts}), so there is nothing to compare; the runs and their reasons are "
            f"listed under 'Failed, diverged and unfinished runs'."
        )
    else:
        parts = ", ".join(f"{counts[s]} {s}" for s in sorted(counts.index) if s != COMPLETED)
        status.append(
            f"{len(done)} of {total} runs completed ({parts}); the tables and tests use completed runs "
            f"only, and every other run is listed under 'Failed, diverged and unfinished runs'."
        )

    primary = METRICS[0][0]
    for a, b, _ in COMPARISONS:
        rows = paired[(paired["a"] == a) & (paired["b"] == b) & (paired["metric"] == primary)]
        if (a, b) == (CORRECT, BUGGY):
            rows = rows[pd.to_numeric(rows["k"], errors="coerce") != 1]  # k=1 is the sanity row above
        for _, row in rows.iterrows():
            out.append(_pair_sentence(row))
        if (a, b) == (CORRECT, BUGGY):
            loss_rows = paired[(paired["a"] == a) & (paired["b"] == b) & (paired["metric"] == "final.dev/loss")]
            for _, row in loss_rows[pd.to_numeric(loss_rows["k"], errors="coerce") != 1].iterrows():
                out.append(_pair_sentence(row))
            if len(rows) >= 2:
                trend = ", ".join(f"k={r['k']}: {fmt(r['mean_diff'], '.2f', signed=True)}" for _, r in rows.iterrows())
                out.append(f"sam_full − sam_last {table_label(primary)} by accumulation: {trend}.")

    if len(paired) and (paired["n"].between(1, 4)).any():
        ns = sorted(set(int(n) for n in paired["n"] if 0 < n < 5))
        out.append(
            f"Caution: the paired comparisons rest on n={'/'.join(map(str, ns))} seeds; with so few seeds "
            f"only large effects can show, and a 'no significant difference' is not evidence of no effect."
        )

    if "mean_step_time_s" in done.columns and done["mean_step_time_s"].notna().any():
        times = done.groupby(["k", "arm"])["mean_step_time_s"].mean()
        for k in sorted(set(int(k) for k in done["k"].dropna())):
            if (BASELINE not in arm_order(done[done["k"] == k]["arm"])) or (k, BASELINE) not in times.index:
                continue
            base = times[(k, BASELINE)]
            ratios = [
                f"{arm} {times[(k, arm)] / base:.2f}×"
                for arm in arm_order(done["arm"])
                if arm != BASELINE and (k, arm) in times.index and base > 0
            ]
            if ratios:
                out.append(f"At k={k} an update takes {base:.3g} s with AdamW; relative to that: {', '.join(ratios)}.")

    cos = curves[curves["metric"] == "diag/grad_cos"] if not curves.empty else curves
    if len(cos):
        per_k = cos.groupby("k")["value"].mean()
        text = ", ".join(f"k={int(k)}: {v:.3f}" for k, v in per_k.items())
        out.append(
            f"Mean cosine between the last-replay and the full-replay gradient (diag/grad_cos, all SAM runs "
            f"that logged it, all updates): {text}."
        )
    return out + status


# ---------------------------------------------------------------------------------------------------------------------
# the answer: what the sweep says about the question the repo exists for


def question_k(runs: pd.DataFrame, a: str = CORRECT, b: str = BUGGY) -> int | None:
    """The largest accumulation k > 1 at which both arms have completed runs: where the question is asked."""
    done = completed_runs(runs)
    ks = [int(k) for k in distinct_values(done["k"]) if int(k) > 1 and {a, b} <= set(done[done["k"] == k]["arm"])]
    return max(ks) if ks else None


def _arm_cell(runs: pd.DataFrame, arm: str, k: int, metric: str, spec: str) -> str:
    values = completed_runs(runs)
    values = values[(values["arm"] == arm) & (values["k"] == k)][metric].dropna().astype(float)
    if values.empty:
        return "–"
    return fmt(values.mean(), spec) + ("" if len(values) < 2 else f" ± {fmt(values.std(ddof=1), spec)}")


def _cost_text(cells: pd.DataFrame, k: int, metric: str = "dev/f1") -> str:
    """The updates-to-target sentence for sam_last against sam_full at k: among the `metric` targets that sam_full
    reached in most of its runs, the one where sam_last needs the most updates relative to it (when sam_last
    reached none within the budget, that is the earliest one: it gives the largest lower bound)."""
    reached = cells[
        (cells["arm"] == CORRECT)
        & (cells["k"] == k)
        & (cells["target_metric"] == metric)
        & ~cells["median_censored"].astype(bool)
    ]
    label = metric_label(metric)
    if reached.empty:
        return f"sam_full itself reached none of the {label} targets in most seeds, so no updates-to-target ratio."
    ratios = [cost_ratio(cells, BUGGY, CORRECT, k=k, metric=metric, target=float(t)) for t in reached["target"]]
    ratios = [r for r in ratios if not math.isnan(r["ratio"])]
    if not ratios:
        return f"sam_last has no {label} target cell to compare."
    r = max(ratios, key=lambda item: item["ratio"])
    target = r["target"]
    which = (
        f"the largest gap among the {label} targets {', '.join(f'{t:g}' for t in sorted(reached['target']))}; "
        f"a run reaches a target at its first evaluation at or above it, periodic dev-subset evaluations included"
    )
    if r["lower_bound"]:
        # a lower bound is rounded down, so the printed bound still holds (100/60 = 1.67 reads "more than 1.6×")
        bound = math.floor(r["ratio"] * 10 + 1e-9) / 10
        return (
            f"To reach {label} {target:g}, the last-batch replay needs **more than {bound:.1f}× the updates** "
            f"of full replay: sam_full gets there in a median {r['fast_median']:.0f} updates "
            f"({r['fast_reached']}/{r['fast_n']} seeds), sam_last in {r['slow_reached']}/{r['slow_n']} seeds "
            f"within the whole budget of {r['slow_budget']} updates ({which})."
        )
    return (
        f"To reach {label} {target:g}, the last-batch replay needs **{r['ratio']:.1f}× the updates** of full "
        f"replay (median {r['slow_median']:.0f} against {r['fast_median']:.0f}; reached by "
        f"{r['slow_reached']}/{r['slow_n']} and {r['fast_reached']}/{r['fast_n']} seeds; {which})."
    )


def _buggy_diverged_everywhere(runs: pd.DataFrame) -> tuple[int, int, int] | None:
    """(k, diverged seeds, seeds) at the largest k > 1 where sam_full completed and every sam_last run diverged."""
    done = completed_runs(runs)
    for k in sorted((int(k) for k in distinct_values(runs["k"]) if int(k) > 1), reverse=True):
        buggy = runs[(runs["arm"] == BUGGY) & (runs["k"] == k)]
        correct = done[(done["arm"] == CORRECT) & (done["k"] == k)]
        if len(buggy) and not correct.empty and (buggy["status"] == "diverged").all():
            return k, len(buggy), len(buggy)
    return None


def answer(runs: pd.DataFrame, paired: pd.DataFrame, sanity: pd.DataFrame, cells: pd.DataFrame) -> dict[str, str]:
    """The question, the answer in one sentence (effect size, CI, p, n) with the updates-to-target cost, and the
    k = 1 sanity check, each a short paragraph of markdown: {"question", "answer", "cost", "sanity"}."""
    k = question_k(runs)
    metric = primary_metric(runs)
    label, short = metric_label(metric), metric_short(metric)
    out = {
        "question": (
            "**Question.** Does replaying only the last micro-batch in SAM's second pass (the widely "
            "copied loop) cost accuracy, compared with replaying the whole window of k micro-batches?"
        )
    }
    diverged = _buggy_diverged_everywhere(runs) if k is None else None
    if diverged is not None:  # a result, not a gap: the buggy arm never finished training at this k
        dk, n_div, n = diverged
        out["answer"] = (
            f"**Answer: sam_last diverged on {n_div}/{n} seeds** at k = {dk}, where sam_full completed: the "
            "last-batch replay did not train to the end at all, so there is no paired difference to estimate."
        )
        out["cost"] = ""
    elif k is None:
        out["answer"] = (
            "**Answer: not measured.** The sweep has no k > 1 with completed sam_full and sam_last "
            "runs, so it cannot answer the question."
        )
        out["cost"] = ""
    else:
        rows = paired[
            (paired["a"] == CORRECT)
            & (paired["b"] == BUGGY)
            & (paired["metric"] == f"final.{metric}")
            & (pd.to_numeric(paired["k"], errors="coerce") == k)
        ]
        means = (
            f"{label} {_arm_cell(runs, CORRECT, k, f'final.{metric}', '.1f')} with full replay against "
            f"{_arm_cell(runs, BUGGY, k, f'final.{metric}', '.1f')} with last-batch replay"
        )
        if rows.empty or rows.iloc[0]["n"] < 2:
            n = 0 if rows.empty else int(rows.iloc[0]["n"])
            out["answer"] = (
                f"**Answer: too few seeds.** At k = {k}: {means}, from {n} paired seed(s); a paired "
                f"comparison needs at least 2."
            )
        else:
            r = rows.iloc[0]
            effect = (
                f"sam_full − sam_last = **{fmt(r['mean_diff'], '.1f', signed=True)} {short}** "
                f"[95% CI {fmt(r['ci_low'], '.1f', signed=True)}, {fmt(r['ci_high'], '.1f', signed=True)}], "
                f"paired t {p_clause(r['p_value'])}, n = {int(r['n'])} seeds"
            )
            excludes = r["ci_low"] > 0 or r["ci_high"] < 0
            significant = excludes and not is_missing(r["p_value"]) and r["p_value"] < 0.05
            if significant and r["mean_diff"] > 0:
                head = "**Answer: yes.**"
            elif significant:
                head = "**Answer: no, the opposite.**"
            else:
                head = "**Answer: not shown.** No significant difference at this budget:"
            out["answer"] = (
                f"{head} At k = {k} the last-batch replay costs accuracy: {means}; {effect}."
                if significant and r["mean_diff"] > 0
                else f"{head} At k = {k}: {means}; {effect}."
            )
        out["cost"] = _cost_text(cells, k, metric)
    checked = sanity[sanity["passed"].notna()] if not sanity.empty else sanity
    if checked.empty:
        out["sanity"] = (
            "**Sanity check (k = 1):** not possible: no seed has completed sam_full and sam_last runs at k = 1."
        )
    elif checked["passed"].astype(bool).all():
        out["sanity"] = (
            "**Sanity check (k = 1): passed.** With one micro-batch per update, full and last replay are "
            "the same algorithm, and sam_full and sam_last agree seed by seed on "
            f"{', '.join(checked['metric'])}."
        )
    else:
        bad = checked[~checked["passed"].astype(bool)]
        out["sanity"] = (
            "**Sanity check (k = 1): FAILED** on " + ", ".join(bad["metric"]) + ": full and last replay "
            "should compute the same thing at k = 1, so the replay code or the setup differs."
        )
    return out


def headline_table(runs: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """Per arm at the question's k (and k = 1): the final primary score (dev F1, or ROUGE-W for KLUE-MRC), EM and
    loss over seeds, and the median updates to each target of the primary score (reached/n)."""
    k = question_k(runs)
    ks = [
        kk for kk in (k, 1) if kk is not None and kk in set(int(v) for v in distinct_values(completed_runs(runs)["k"]))
    ]
    metric = primary_metric(runs)
    label = metric_label(metric)
    f1_targets = (
        sorted(cells[cells["target_metric"] == metric]["target"].astype(float).unique()) if not cells.empty else []
    )
    headers = ["arm", "k", "seeds", label, "dev EM", "dev loss"] + [
        f"updates to {label.split(' ', 1)[-1]} {t:g}" for t in f1_targets
    ]
    rows = []
    done = completed_runs(runs)
    for kk in ks:
        for arm in arm_order(done[done["k"] == kk]["arm"]):
            n = int(((done["arm"] == arm) & (done["k"] == kk)).sum())
            row = [arm, kk, n] + [
                _arm_cell(runs, arm, kk, m, spec)
                for m, spec in ((f"final.{metric}", ".1f"), ("final.dev/em", ".1f"), ("final.dev/loss", ".3f"))
            ]
            for t in f1_targets:
                hit = cells[
                    (cells["arm"] == arm)
                    & (cells["k"] == kk)
                    & (cells["target_metric"] == metric)
                    & (cells["target"].astype(float) == t)
                ]
                row.append(_median_text(hit.iloc[0]) if len(hit) else "–")
            rows.append(row)
    if not rows:
        return []
    return [
        md_table(headers, rows, "lrr" + "r" * (len(headers) - 3)),
        "",
        "Scores: mean ± std over seeds of the final evaluation (whole dev set). Updates to a target: median over "
        "seeds, with how many seeds reached it; '>' when most did not (see 'Updates to target').",
        "",
    ]


def _median_text(cell: pd.Series) -> str:
    reached = f"{int(cell['reached'])}/{int(cell['n'])}"
    if bool(cell["median_censored"]):
        return f"> {int(cell['last_update'])} ({reached})"
    return f"{cell['median_update']:.0f} ({reached})"


def _answer_section(parts: dict[str, str], table: list[str]) -> list[str]:
    lines = [
        "## The answer",
        "",
        parts["question"],
        "",
        parts["answer"] + (" " + parts["cost"] if parts["cost"] else ""),
        "",
        parts["sanity"],
        "",
    ]
    return lines + table


def headline(runs: pd.DataFrame, paired: pd.DataFrame, sanity: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    """The report's first section as markdown lines (also written alone as headline.md): the answer, then the
    headline table."""
    return _answer_section(answer(runs, paired, sanity, cells), headline_table(runs, cells))
