"""The report's prose generated from its tables: the findings, the answer to the question and the headline."""

from __future__ import annotations

import math

import pandas as pd

from analysis.baseline import Floor
from analysis.collect import arm_order
from analysis.report.formatting import (
    column_or_empty,
    distinct_values,
    fmt,
    is_missing,
    join_values,
    md_table,
    p_clause,
    plural,
)
from analysis.report.tables import (
    METRICS,
    completed_runs,
    primary_metric,
)
from analysis.stats import ALPHA, TEST_NAME
from analysis.targets import cost_ratio
from experiments.arms import BASELINE, BUGGY, COMPARISONS, CORRECT, TRAINER_PATTERN
from experiments.metrics import HIGHER, number_format, words
from experiments.metrics import label as metric_label
from experiments.metrics import metric as metric_row
from experiments.metrics import short as metric_short
from experiments.passes import passes_per_update
from experiments.rundir import COMPLETED
from experiments.schema import EMBEDDED_MODEL

# ---------------------------------------------------------------------------------------------------------------------
# findings: sentences generated from the tables


def _direction_text(a: str, b: str, key: str, diff: float) -> str:
    """What a significant a − b = diff says, in the words of the metric's row of experiments.metrics."""
    row, higher = metric_row(key), diff > 0
    if (a, b) == (CORRECT, BUGGY) and row.direction in ("higher", "lower"):
        if higher == (row.direction == HIGHER):
            return f"replaying only the last micro-batch {'costs' if row.direction == HIGHER else 'raises'} {row.label}"
        return f"the last-batch replay comes out ahead on {row.label} here, against the expectation that it hurts"
    word = words(key)[0 if higher else 1]
    return f"{a} {word} than {b}" + ("" if row.label in word else f" ({row.label})")


def _pair_sentence(row: pd.Series) -> str:
    """One paired comparison as a sentence: the difference, its t-interval, n and the paired t-test's p; the verdict
    comes from the test (p < ALPHA), which its t-interval always agrees with."""
    key, spec = row["metric"], number_format(row["metric"])
    head = f"At k={row['k']}, {row['a']} − {row['b']} {metric_label(key)} = {fmt(row['mean_diff'], spec, signed=True)}"
    if row["n"] < 2:
        return f"{head} from n={row['n']} pair(s): too few seeds for a test."
    if is_missing(row["p_value"]):
        return f"{head}, the same on all n={row['n']} seeds: no spread to test against."
    ci = f"[95% CI {fmt(row['ci_low'], spec, signed=True)}, {fmt(row['ci_high'], spec, signed=True)}]"
    stats_text = f"{ci}, n={row['n']} seeds, {TEST_NAME} {p_clause(row['p_value']).replace(' = ', '=')}"
    if row["p_value"] < ALPHA:
        return f"{head} {stats_text}: {_direction_text(row['a'], row['b'], key, row['mean_diff'])}."
    return f"{head} {stats_text}: no significant difference."


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

    primary = METRICS[0]
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
                out.append(f"sam_full − sam_last {metric_label(primary)} by accumulation: {trend}.")

    if len(paired) and (paired["n"].between(1, 4)).any():
        ns = sorted(set(int(n) for n in paired["n"] if 0 < n < 5))
        out.append(
            f"Caution: the paired comparisons rest on n={'/'.join(map(str, ns))} seeds; with so few seeds "
            f"only large effects can show, and a 'no significant difference' is not evidence of no effect."
        )

    literal = done[done["literal_cost"].fillna(True).astype(bool)] if "literal_cost" in done.columns else done
    if "mean_step_time_s" in literal.columns and literal["mean_step_time_s"].notna().any():
        times = literal.groupby(["k", "arm"])["mean_step_time_s"].mean()
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
            untimed = _shortcut_cost_text(done, times, k)
            if untimed:
                out.append(untimed)

    cos = curves[curves["metric"] == "diag/grad_cos"] if not curves.empty else curves
    if len(cos):
        per_k = cos.groupby("k")["value"].mean()
        text = ", ".join(f"k={int(k)}: {v:.3f}" for k, v in per_k.items())
        out.append(
            f"Mean cosine between the last-replay and the full-replay gradient (diag/grad_cos, all SAM runs "
            f"that logged it, all updates): {text}."
        )
    return out + status


def _shortcut_cost_text(done: pd.DataFrame, times: pd.Series, k: int) -> str | None:
    """The arms at `k` that ran only with optim.replay_shortcut (so no literal time exists): their literal loops'
    cost relative to AdamW's from pass counts (experiments.passes.passes_per_update, which the micro-batch size
    cancels out of), or None when every arm at `k` was timed literally."""
    if "replay" not in done.columns:
        return None
    at_k = done[done["k"] == k]
    untimed = [arm for arm in arm_order(at_k["arm"]) if arm != BASELINE and (k, arm) not in times.index]
    if not untimed:
        return None
    base = passes_per_update("none", k, 1)
    parts = []
    for arm in untimed:
        replay = str(at_k[at_k["arm"] == arm]["replay"].iloc[0])
        parts.append(f"{arm} {passes_per_update(replay, k, 1) / base:.2f}×")
    return (
        f"At k={k}, {join_values(untimed)} ran with optim.replay_shortcut=true (their wasted passes skipped), so their "
        f"step times are not their loops' cost and are left out; by pass count (experiments/passes.py) their literal "
        f"loops cost, relative to AdamW: {', '.join(parts)}."
    )


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


# what the arms' names mean in a sentence
_ALGORITHM = {
    BUGGY: "the last-batch replay",
    TRAINER_PATTERN: "SAM on the last micro-batch alone (the public Trainer pattern)",
}


def _cost_text(cells: pd.DataFrame, k: int, metric: str = "dev/f1", slow: str = BUGGY) -> str:
    """The updates-to-target sentence for `slow` (sam_last, or sam_last_only) against sam_full at k: among the
    `metric` targets that sam_full reached in most of its runs, the one where `slow` needs the most updates relative
    to it (when `slow` reached none within the budget, that is the earliest one: it gives the largest lower bound).
    When `slow` never reached it in any seed the sentence says so first, the ratio bound after."""
    reached = cells[
        (cells["arm"] == CORRECT)
        & (cells["k"] == k)
        & (cells["target_metric"] == metric)
        & ~cells["median_censored"].astype(bool)
    ]
    label = metric_label(metric)
    if reached.empty:
        return f"sam_full itself reached none of the {label} targets in most seeds, so no updates-to-target ratio."
    ratios = [cost_ratio(cells, slow, CORRECT, k=k, metric=metric, target=float(t)) for t in reached["target"]]
    ratios = [r for r in ratios if not math.isnan(r["ratio"])]
    if not ratios:
        return f"{slow} has no {label} target cell to compare."
    r = max(ratios, key=lambda item: item["ratio"])
    target, name = r["target"], _ALGORITHM.get(slow, slow)
    which = (
        f"the largest gap among the {label} targets {', '.join(f'{t:g}' for t in sorted(reached['target']))}; "
        f"a run reaches a target at its first evaluation at or above it, periodic dev-subset evaluations included"
    )
    fast = f"sam_full gets there in a median {r['fast_median']:.0f} updates ({r['fast_reached']}/{r['fast_n']} seeds)"
    if r["lower_bound"]:
        # a lower bound is rounded down, so the printed bound still holds (100/60 = 1.67 reads "more than 1.6×")
        bound = math.floor(r["ratio"] * 10 + 1e-9) / 10
        if r["slow_reached"] == 0:
            return (
                f"To reach {label} {target:g}: {slow} **never reached it within the {r['slow_budget']}-update "
                f"budget ({r['slow_reached']}/{r['slow_n']} seeds)**, while {fast}; so {name} needs more than "
                f"{bound:.1f}× the updates of full replay, a bound set by the budget, not a measured ratio ({which})."
            )
        return (
            f"To reach {label} {target:g}, {name} needs **more than {bound:.1f}× the updates** "
            f"of full replay: {fast}, {slow} in {r['slow_reached']}/{r['slow_n']} seeds "
            f"within the whole budget of {r['slow_budget']} updates ({which})."
        )
    return (
        f"To reach {label} {target:g}, {name} needs **{r['ratio']:.1f}× the updates** of full "
        f"replay (median {r['slow_median']:.0f} against {r['fast_median']:.0f}; reached by "
        f"{r['slow_reached']}/{r['slow_n']} and {r['fast_reached']}/{r['fast_n']} seeds; {which})."
    )


def _arm_mean(runs: pd.DataFrame, arm: str, k: int, column: str) -> float:
    done = completed_runs(runs)
    values = done[(done["arm"] == arm) & (done["k"] == k)][column].dropna().astype(float) if column in done else []
    return float(values.mean()) if len(values) else math.nan


def _effect(runs: pd.DataFrame, paired: pd.DataFrame, a: str, b: str, k: int, metric: str) -> tuple[str, str]:
    """(head, text) of the paired comparison a − b at k on the primary score: head is "yes", "opposite", "not shown"
    or "too few"; text gives both arms' means, the effect with the t-interval, the paired t-test's p and n."""
    label, short, column = metric_label(metric), metric_short(metric), f"final.{metric}"
    rows = paired[
        (paired["a"] == a)
        & (paired["b"] == b)
        & (paired["metric"] == column)
        & (pd.to_numeric(paired["k"], errors="coerce") == k)
    ]
    means = (
        f"{label} {_arm_cell(runs, a, k, column, '.1f')} with {a} against {_arm_cell(runs, b, k, column, '.1f')} "
        f"with {b}"
    )
    if rows.empty or rows.iloc[0]["n"] < 2 or is_missing(rows.iloc[0]["p_value"]):
        n = 0 if rows.empty else int(rows.iloc[0]["n"])
        return "too few", f"{means}, from {n} paired seed(s); a paired t-test needs at least 2 that differ"
    r = rows.iloc[0]
    effect = (
        f"{a} − {b} = **{fmt(r['mean_diff'], '.1f', signed=True)} {short}** "
        f"[95% CI {fmt(r['ci_low'], '.1f', signed=True)}, {fmt(r['ci_high'], '.1f', signed=True)}], "
        f"{TEST_NAME} {p_clause(r['p_value'])}, n = {int(r['n'])} seeds"
    )
    if r["p_value"] < ALPHA:
        return ("yes" if r["mean_diff"] > 0 else "opposite"), f"{means}; {effect}"
    return "not shown", f"{means}; {effect}"


def setup_text(runs: pd.DataFrame, floor: Floor | None = None, floor_error: str = "") -> str:
    """**Setup.** What the answer was measured on, read from the runs' resolved configs, summaries and env.json:
    the data (the generated synthetic set: its train/dev sizes and facts per paragraph; else its source and
    example counts), the model, the budget (updates per run at each k, examples per update) and the hardware; then
    the no-training floor on the same dev set (analysis.baseline), or why it was not computed."""
    done = completed_runs(runs)
    source = join_values(distinct_values(column_or_empty(runs, "data.source")))
    dev_n = join_values([int(v) for v in distinct_values(column_or_empty(runs, "data_stats.dev_examples"))])
    train_n = join_values([int(v) for v in distinct_values(column_or_empty(runs, "data_stats.train_examples"))])
    if source == "generated":
        facts = distinct_values(column_or_empty(runs, "data.generated.facts_per_context"))
        facts_text = f"{join_values(facts)}-fact paragraphs" if facts else "paragraphs"
        n_train = join_values(distinct_values(column_or_empty(runs, "data.generated.n_train")))
        n_dev = join_values(distinct_values(column_or_empty(runs, "data.generated.n_dev")))
        data = (
            f"synthetic questions about {facts_text} (the repo's generated set: the facts of a paragraph share an "
            f"answer type, so the others are same-type distractors), {n_train} train / {n_dev} dev questions"
        )
    else:
        where = [
            v
            for key in ("data.hub_path", "data.train_file", "data.validation_file")
            for v in distinct_values(column_or_empty(runs, key))
        ]
        data = f"{source} data ({join_values(where)}), {train_n} train / {dev_n} dev examples"
    model = join_values([f"`{v}`" for v in distinct_values(column_or_empty(runs, "model.name_or_path"))])
    if distinct_values(column_or_empty(runs, "model.name_or_path")) == [EMBEDDED_MODEL]:
        model += " (all-MiniLM-L6-v2, embedded in the environment)"
    budget = []
    if len(done) and "updates" in done.columns:
        for k, group in done.groupby("k"):
            ups = [int(v) for v in distinct_values(group["updates"])]
            mb = [int(v) for v in distinct_values(column_or_empty(group, "train.micro_batch_size"))]
            per = f" of {int(k) * mb[0]} examples ({int(k)} × {mb[0]})" if len(mb) == 1 else ""
            budget.append(f"{join_values(ups)} updates{per} at k = {int(k)}")
    devices = sorted(
        {
            str(name)
            + (f" ({dtype}, {int(t)} thread{'s' if int(t) != 1 else ''})" if not is_missing(t) else f" ({dtype})")
            for name, dtype, t in zip(
                column_or_empty(runs, "env.device.name"),
                column_or_empty(runs, "env.device.type"),
                column_or_empty(runs, "env.device.threads"),
            )
            if not is_missing(name)
        }
    )
    text = (
        f"**Setup.** Data: {data}. Model: {model}. Budget per run: {join_values(budget, empty='unknown')}. "
        f"Hardware: {join_values(devices, empty='unknown (no env.json)')}."
    )
    if floor is not None:
        text += (
            f" No-training floor: the first-span-of-the-right-type heuristic (`python -m experiments.data.baseline`, "
            f"computed by this report) scores **{metric_label(floor.metric)} {floor.score:.1f}** (EM {floor.em:.1f}) "
            f"on the same {floor.dev_examples} dev questions."
        )
    else:
        text += f" No-training floor: not computed ({floor_error or 'no run directories'})."
    return text


def _below_floor(runs: pd.DataFrame, k: int, metric: str, floor: Floor | None, arms) -> str:
    """The sentence naming the arms whose mean final score at k ends below the no-training floor ('' when none)."""
    if floor is None or floor.metric != metric:
        return ""
    below = [(a, _arm_mean(runs, a, k, f"final.{metric}")) for a in arms]
    below = [(a, v) for a, v in below if not math.isnan(v) and v < floor.score]
    if not below:
        return ""
    names = [f"{a} ({v:.1f})" for a, v in below]
    names = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (
        f"At k = {k}, {names} {'ends' if len(below) == 1 else 'end'} **below the no-training floor** of "
        f"{metric_label(metric)} {floor.score:.1f}: worse than a heuristic that reads no training data."
    )


def _buggy_diverged_everywhere(runs: pd.DataFrame) -> tuple[int, int] | None:
    """(k, seeds) at the largest k > 1 where sam_full completed and every sam_last run (all seeds) diverged."""
    done = completed_runs(runs)
    for k in sorted((int(k) for k in distinct_values(runs["k"]) if int(k) > 1), reverse=True):
        buggy = runs[(runs["arm"] == BUGGY) & (runs["k"] == k)]
        correct = done[(done["arm"] == CORRECT) & (done["k"] == k)]
        if len(buggy) and not correct.empty and (buggy["status"] == "diverged").all():
            return k, len(buggy)
    return None


def answer(
    runs: pd.DataFrame,
    paired: pd.DataFrame,
    sanity: pd.DataFrame,
    cells: pd.DataFrame,
    floor: Floor | None = None,
    floor_error: str = "",
) -> dict[str, str]:
    """The question, the setup it was measured on (with the no-training floor `floor`, analysis.baseline), the
    answer in one sentence (effect size, t-interval, p, n) with the updates-to-target cost, the same for the public
    Trainer pattern (sam_full − sam_last_only) when the sweep has it, and the k = 1 sanity check, each a short
    paragraph of markdown: {"question", "setup", "answer", "cost", "floor", "trainer", "sanity"}."""
    k = question_k(runs)
    metric = primary_metric(runs)
    out = {
        "question": (
            "**Question.** Does replaying only the last micro-batch in SAM's second pass (the widely "
            "copied loop) cost accuracy, compared with replaying the whole window of k micro-batches?"
        ),
        "setup": setup_text(runs, floor, floor_error),
        "floor": "",
        "trainer": "",
    }
    diverged = _buggy_diverged_everywhere(runs) if k is None else None
    if diverged is not None:  # a result, not a gap: the buggy arm never finished training at this k
        dk, n = diverged
        out["answer"] = (
            f"**Answer: sam_last diverged on {n}/{n} seeds** at k = {dk}, where sam_full completed: the "
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
        head, text = _effect(runs, paired, CORRECT, BUGGY, k, metric)
        out["answer"] = {
            "yes": f"**Answer: yes.** At k = {k} the last-batch replay costs accuracy: {text}.",
            "opposite": f"**Answer: no, the opposite.** At k = {k}: {text}.",
            "not shown": f"**Answer: not shown.** No significant difference at this budget: At k = {k}: {text}.",
            "too few": f"**Answer: too few seeds.** At k = {k}: {text}.",
        }[head]
        out["cost"] = _cost_text(cells, k, metric)
        done = completed_runs(runs)
        out["floor"] = _below_floor(runs, k, metric, floor, arm_order(done[done["k"] == k]["arm"]))
        if TRAINER_PATTERN in set(done[done["k"] == k]["arm"]):
            head, text = _effect(runs, paired, CORRECT, TRAINER_PATTERN, k, metric)
            verdict = {
                "yes": "costs accuracy too",
                "opposite": "comes out ahead",
                "not shown": "no significant difference",
                "too few": "too few seeds",
            }[head]
            out["trainer"] = (
                f"**The public Trainer pattern ({TRAINER_PATTERN}, SAM on the last micro-batch alone): {verdict}.** "
                f"At k = {k}: {text}. {_cost_text(cells, k, metric, slow=TRAINER_PATTERN)}"
            )
    checked = sanity[sanity["passed"].notna()] if not sanity.empty else sanity
    if checked.empty:
        out["sanity"] = (
            "**Sanity check (k = 1):** not possible: no seed has completed sam_full and sam_last runs at k = 1."
        )
    elif checked["passed"].astype(bool).all():
        others = ", ".join(dict.fromkeys(checked["b"]))
        out["sanity"] = (
            "**Sanity check (k = 1): passed.** With one micro-batch per update, every SAM replay rule is "
            f"the same algorithm, and sam_full and {others} agree seed by seed on "
            f"{', '.join(dict.fromkeys(checked['metric']))}."
        )
    else:
        bad = checked[~checked["passed"].astype(bool)]
        failed = ", ".join(f"{m} ({b})" for m, b in zip(bad["metric"], bad["b"]))
        out["sanity"] = (
            "**Sanity check (k = 1): FAILED** on " + failed + ": these replay rules "
            "should compute what full replay computes at k = 1, so the replay code or the setup differs."
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
    lines = ["## The answer", "", parts["question"], "", parts["setup"], ""]
    lines += [" ".join(p for p in (parts["answer"], parts["cost"], parts["floor"]) if p), ""]
    if parts["trainer"]:
        lines += [parts["trainer"], ""]
    return lines + [parts["sanity"], ""] + table


def headline(
    runs: pd.DataFrame,
    paired: pd.DataFrame,
    sanity: pd.DataFrame,
    cells: pd.DataFrame,
    floor: Floor | None = None,
    floor_error: str = "",
) -> list[str]:
    """The report's first section as markdown lines (also written alone as headline.md): the question, the setup
    with the no-training floor, the answer, the Trainer pattern's answer, the sanity check, then the headline
    table."""
    return _answer_section(answer(runs, paired, sanity, cells, floor, floor_error), headline_table(runs, cells))
