"""experiments.metrics: the one metric table, held against the keys a real training run logs and against every
consumer that reads it (schema, sweep spec, trainer, collect, stats, targets, the report). The sharpness package's
columns are held against it in tests/test_sharpness_cli.py (that module's fixture measures real checkpoints)."""

from __future__ import annotations

import json
import math

import pytest

from analysis.collect import REPORT_CURVE_METRICS
from analysis.report.tables import METRICS as REPORT_METRICS
from analysis.report.tables import OPTIONAL_METRICS, PAIRED_METRICS, SANITY_METRICS
from analysis.stats import EQUALITY_TOL, equality_check
from analysis.targets import DEFAULT_TARGETS, _reaches
from experiments import metrics
from experiments.metrics import (
    BEST_BY,
    EXACT,
    HIGHER,
    KIND_WORDS,
    LOWER,
    METRICS,
    NEITHER,
    TOLERANCE,
    lookup,
    metric,
    words,
)
from experiments.rundir import STEP_KEYS, read_metrics
from experiments.schema import CHOICES
from experiments.sweep_spec import REPORT_TARGET_METRICS
from tests.conftest import run_dirs


def test_rows_are_well_formed_and_unique():
    assert len({m.key for m in METRICS}) == len(METRICS)
    for m in METRICS:
        assert m.direction in (HIGHER, LOWER, NEITHER), m.key
        assert m.kind in KIND_WORDS, m.key
        assert m.source in ("train", "eval", "sharpness"), m.key
        assert m.equal_at_k1 in (None, EXACT, TOLERANCE), m.key
        assert m.bounds[0] < m.bounds[1], m.key
        format(1.5, m.fmt)  # a valid number format
        assert all(m.bounds[0] <= t <= m.bounds[1] for t in m.targets), m.key
        if m.targets or m.best_by:  # a target or a best checkpoint needs a way to be better
            assert m.direction != NEITHER and m.source == "eval", m.key
        if m.kind in ("score", "loss"):  # a score is better higher, a loss lower: the words would lie otherwise
            assert m.direction == (HIGHER if m.kind == "score" else LOWER), m.key


def test_verdict_words_by_kind():
    assert words("dev/f1") == ("better", "worse")
    assert words("final.dev/loss") == ("higher loss", "lower loss")
    assert words("lambda_max") == ("sharper", "flatter")
    assert words("worst_sharpness_rho0.1") == ("sharper", "flatter")
    assert words("gap_subset") == ("larger gap", "smaller gap")
    # a sharpness measure is never "better": whether flatter generalises better is the question, not a premise
    assert all(metric(m.key).direction == NEITHER for m in METRICS if m.kind == "sharpness")
    assert words("train/lr") == ("higher learning rate", "lower learning rate")


def test_lookup_resolves_prefixes_and_radii_and_names_a_missing_key():
    assert lookup("final.dev/f1") is metric("dev/f1")
    row = metric("avg_sharpness_rho0.05")
    assert (row.key, row.label, row.kind) == ("avg_sharpness_rho0.05", "average sharpness ρ=0.05", "sharpness")
    assert metric("worst_sharpness_rho1e+30").label == "worst-case sharpness ρ=1e+30"
    assert metrics.keyed("avg_sharpness_rho{rho}", 0.1) == "avg_sharpness_rho0.1"
    assert lookup("no/such") is None
    with pytest.raises(KeyError, match="'no/such' is not in experiments.metrics.METRICS"):
        metric("no/such")


def test_every_consumer_reads_the_table():
    assert (
        CHOICES["train.save_best_by"]
        == BEST_BY
        == REPORT_TARGET_METRICS
        == ("dev/f1", "dev/em", "dev/loss", "dev/rouge_w")
    )
    assert DEFAULT_TARGETS == {"dev/f1": (50.0, 80.0, 90.0)}
    assert set(REPORT_CURVE_METRICS) == {m.key for m in METRICS if m.curve}
    assert {"train/loss", "train/step_time", "dev/f1", "dev/em", "dev/loss", "diag/grad_cos"} <= set(
        REPORT_CURVE_METRICS
    )
    assert REPORT_METRICS == ("final.dev/f1", "final.dev/em", "final.dev/loss", "final.train/loss")
    assert "final.dev/rouge_w" in OPTIONAL_METRICS and "final.dev/has_ans_f1" in OPTIONAL_METRICS
    assert PAIRED_METRICS == ("final.dev/em", "final.dev/loss")
    assert SANITY_METRICS == REPORT_METRICS
    # the direction decides the targets: a loss target is reached from above, a score from below
    assert _reaches("dev/loss", 0.9, 1.0) and not _reaches("dev/loss", 1.1, 1.0)
    assert _reaches("dev/f1", 80.0, 80.0) and not _reaches("dev/f1", 79.9, 80.0)
    with pytest.raises(ValueError, match="no direction"):
        metric("train/lr").reaches(1.0, 1.0)
    # the trainer's best-checkpoint rule: strictly better in the row's direction
    assert metric("dev/loss").improves(0.4, 0.5) and not metric("dev/loss").improves(0.5, 0.5)
    assert metric("dev/f1").improves(51.0, 50.0) and not metric("dev/f1").improves(49.0, 50.0)


def test_k1_equality_rule_comes_from_the_table():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "arm": ["sam_full", "sam_last"],
            "k": [1, 1],
            "seed": [0, 0],
            "final.dev/f1": [50.0, 50.0 + 1e-9],
            "final.dev/loss": [1.0, 1.0 + 1e-9],
        }
    )
    assert equality_check(frame, "final.dev/f1")["tol"] == 0.0  # EXACT: counts on the same predictions
    assert equality_check(frame, "final.dev/f1")["passed"] is False
    assert equality_check(frame, "final.dev/loss")["tol"] == EQUALITY_TOL  # TOLERANCE: float rounding
    assert equality_check(frame, "final.dev/loss")["passed"] is True


def test_every_key_a_training_run_logs_is_a_row(tiny_run, tmp_path):
    """A real (tiny) SAM run with the gradient-fidelity diagnostic and periodic evaluations (of the whole dev set,
    so each can be the best): every metric key of its metrics.jsonl and of summary.json's final block has a row; the
    rows of the trainer that a default fp32 run must log (not optional) are all there. With save_best_by=dev/loss
    the best checkpoint is the lowest whole-dev-set loss (the row's direction), not the highest."""

    from experiments.train import main

    code = main(
        [
            *tiny_run("sam_full"),
            "train.max_updates=4",
            "train.eval_every=2",
            "diagnostics.grad_fidelity=true",
            "diagnostics.grad_fidelity_every=2",
            "train.save_best_by=dev/loss",
        ]
    )
    assert code == 0
    (run,) = run_dirs(tmp_path)
    logged = set()
    for event in read_metrics(run):
        logged |= {k for k, v in event.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logged -= set(STEP_KEYS) | {"eval/examples"}  # the step keys and the evaluation's size are not metrics
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    whole = [e["dev/loss"] for e in read_metrics(run) if "dev/loss" in e and not e.get("eval/subset")]
    assert len(set(whole)) >= 2 and summary["best"]["value"] == min(whole)
    logged |= {k for k in final if "/" in k and k != "eval/examples"}
    missing = sorted(k for k in logged if lookup(k) is None)
    assert not missing, f"logged keys without a row in experiments.metrics: {missing}"
    expected = {m.key for m in METRICS if m.source in ("train", "eval") and not m.optional}
    assert expected <= logged, f"rows the run did not log: {sorted(expected - logged)}"
    assert all(not math.isnan(final[k]) for k in ("dev/f1", "dev/em", "dev/loss", "train/loss"))
