"""analysis.dose on a hand-made fixed-window sweep (N = 32): every number the tests check is computed by hand below."""

import json
import math

import pandas as pd
import pytest
import yaml

from analysis import dose
from analysis.dose import tables
from analysis.dose.tables import DoseError, expected_cos, implied_snr
from tests.conftest import REPO

REPLAY = {"sam_full": "full", "sam_last": "last", "sam_last_only": "last_only", "sam_micro": "micro"}
T_975_2 = 4.302652729911275  # Student t quantile 0.975, 2 degrees of freedom (scipy.stats.t.ppf(0.975, 2))
T_975_1 = 12.706204736174698  # ... 1 degree of freedom

# (arm, k, micro-batch) -> final dev F1 per seed
F1 = {
    ("sam_full", 1, 32): [90.0, 92.0, 94.0],  # the reference
    ("sam_last", 4, 8): [80.0, 81.0, 85.0],  # gaps 10, 11, 9
    ("sam_last", 16, 2): [60.0, 61.0, 65.0],  # gaps 30, 31, 29
    ("sam_last_only", 4, 8): [70.0, 71.0, 75.0],  # gaps 20, 21, 19
    ("sam_full", 1, 8): [79.0, 80.0, 86.0],  # the control of k = 4: sam_last − it = 1, 1, −1
    ("sam_full", 1, 2): [60.0, 62.0, 63.0],  # the control of k = 16: sam_last − it = 0, −1, 2
    ("sam_micro", 8, 4): [95.0, 96.0],  # − reference: 5, 4
    ("sam_full", 16, 2): [89.0, 93.0],  # − reference: −1, +1
}
GRAD_COS = {4: [0.6, 0.8], 16: [0.2, 0.2]}  # sam_last's diagnostic, per k, seed 0's windows


def _write_run(root, arm, k, batch, seed, f1, status="completed"):
    run_id = f"{arm}-k{k}-b{batch}-s{seed}"
    path = root / run_id
    path.mkdir(parents=True)
    cfg = {
        "arm": arm,
        "seed": seed,
        "sweep": "dose",
        "optim": {"replay": REPLAY[arm], "replay_shortcut": arm in ("sam_last", "sam_last_only")},
        "train": {"accumulation_steps": k, "micro_batch_size": batch, "max_updates": 20},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {"git": {"sha": "0123456789abcdef", "dirty": False}, "device": {"type": "cpu", "name": "Hand CPU"}}
    (path / "env.json").write_text(json.dumps(env), encoding="utf-8")
    # dev F1 at updates 10 and 20: half the final score, then the final score
    events = [
        {"update": 10, "examples": 320, "time": 1.0, "dev/f1": f1 / 2, "eval/kind": "periodic"},
        {"update": 20, "examples": 640, "time": 2.0, "dev/f1": f1, "eval/kind": "final"},
    ]
    if arm == "sam_last" and seed == 0 and k in GRAD_COS:
        events += [
            {"update": u, "examples": 32 * u, "time": 0.1 * u, "diag/grad_cos": c, "diag/grad_norm_ratio": 1 / c}
            for u, c in zip((5, 15), GRAD_COS[k])
        ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    summary = {
        "status": status,
        "run_id": run_id,
        "updates": 20,
        "wall_time_s": 60.0,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "final": {"dev/f1": f1, "dev/em": f1 - 5, "update": 20},
    }
    (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run_id


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "runs" / "dose"
    ids = {}
    for (arm, k, batch), scores in F1.items():
        for seed, f1 in enumerate(scores):
            ids[(arm, k, batch, seed)] = _write_run(root, arm, k, batch, seed, f1)
    lam = {("sam_full", 1, 32): [10.0, 12.0, 14.0], ("sam_micro", 8, 4): [4.0, 7.0]}
    rows = [
        {
            "run_id": ids[(*cell, seed)],
            "lambda_max": v,
            "lambda_max_converged": not (cell[0] == "sam_full" and seed == 2),
        }
        for cell, values in lam.items()
        for seed, v in enumerate(values)
    ]
    out = tmp_path / "report-dose"
    out.mkdir()
    pd.DataFrame(rows).to_csv(out / "sharpness.csv", index=False)
    return tmp_path


def _row(frame, **where):
    mask = pd.Series(True, index=frame.index)
    for key, value in where.items():
        mask &= frame[key] == value
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


def test_the_gap_table_pairs_each_bug_arm_with_the_k1_reference_on_the_seed(sweep):
    result = dose.build(sweep)
    gap = pd.read_csv(result["gap"])
    row = _row(gap, arm="sam_last", k=4)
    # gaps 10, 11, 9: mean 10, s = 1, interval 10 ± t_{0.975,2} / √3
    assert row["n"] == 3 and row["diff"] == pytest.approx(10.0) and row["a_mean"] == pytest.approx(92.0)
    assert row["ci_low"] == pytest.approx(10 - T_975_2 / math.sqrt(3))
    assert row["ci_high"] == pytest.approx(10 + T_975_2 / math.sqrt(3))
    assert _row(gap, arm="sam_last", k=16)["diff"] == pytest.approx(30.0)
    assert _row(gap, arm="sam_last_only", k=4)["diff"] == pytest.approx(20.0)
    # the fit on log2 k over (2, 10), (2, 11), (2, 9), (4, 30), (4, 31), (4, 29): slope 20 / 2, intercept 10 − 2·10
    trend = _row(pd.read_csv(result["trend"]), arm="sam_last")
    assert trend["slope"] == pytest.approx(10.0) and trend["intercept"] == pytest.approx(-10.0)
    assert trend["n"] == 6 and trend["p_value"] < 1e-4
    # sam_last_only has one k: no line
    assert math.isnan(_row(pd.read_csv(result["trend"]), arm="sam_last_only")["slope"])


def test_the_control_of_k_is_sam_full_on_batches_of_n_over_k_with_the_same_seed(sweep):
    control = pd.read_csv(dose.build(sweep)["control"])
    k4 = _row(control, arm="sam_last", k=4)
    assert k4["batch"] == 8 and k4["n"] == 3 and k4["pairs"] == "0,1,2"
    assert k4["diff"] == pytest.approx(1 / 3) and k4["b_mean"] == pytest.approx(245 / 3)  # 1, 1, −1; control mean
    k16 = _row(control, arm="sam_last", k=16)
    assert k16["batch"] == 2 and k16["diff"] == pytest.approx(1 / 3)  # 0, −1, 2
    # sam_last_only at k = 4 against the same control: 70 − 79, 71 − 80, 75 − 86
    assert _row(control, arm="sam_last_only", k=4)["diff"] == pytest.approx(-29 / 3)


@pytest.mark.slow
def test_the_invariance_and_micro_rows_and_the_converged_sharpness(sweep):
    result = dose.build(sweep)
    inv = _row(pd.read_csv(result["invariance"]), k=16)
    # −1, +1: mean 0, s = √2, interval ± t_{0.975,1} · √2 / √2
    assert inv["n"] == 2 and inv["diff"] == pytest.approx(0.0) and inv["p_value"] == pytest.approx(1.0)
    assert inv["ci_high"] == pytest.approx(T_975_1)
    micro = _row(pd.read_csv(result["micro"]), k=8)
    assert micro["m"] == 4 and micro["diff"] == pytest.approx(4.5)
    # λmax: the reference's seed 2 did not converge, so 2 of 3 reference runs and both sam_micro runs are used
    lam = _row(pd.read_csv(result["sharpness"]), measure="lambda_max")
    assert lam["used"] == "4/5" and lam["n"] == 2 and lam["diff"] == pytest.approx(-5.5)  # 4 − 10, 7 − 12


def test_the_gradient_cosine_table_and_its_model(sweep):
    cos = pd.read_csv(dose.build(sweep)["grad_cos"])
    k4 = _row(cos, k=4)
    assert k4["cos_mean"] == pytest.approx(0.7) and k4["floor"] == pytest.approx(0.5)
    assert k4["snr"] == pytest.approx((4 * 0.49 - 1) / (1 - 0.49))  # s = (k cos² − 1) / (1 − cos²)
    assert k4["product_mean"] == pytest.approx(1.0)  # the fixture logs ratio = 1/cos
    # below the pure-noise floor (0.2 < 1/√16) the model has no s ≥ 0: the implied s is negative
    assert _row(cos, k=16)["snr"] < 0
    assert expected_cos(9, 0.0) == pytest.approx(1 / 3)  # pure noise: 1/√k
    assert expected_cos(4, 2.0) == pytest.approx(math.sqrt(3 / 6))
    assert implied_snr(4, expected_cos(4, 2.0)) == pytest.approx(2.0)


def test_the_headline_answers_each_question_with_its_numbers(sweep):
    result = dose.build(sweep)
    text = result["headline"].read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line]
    assert [line.split("**")[1].split(",")[0] for line in lines] == ["Q1", "Q2", "Q3", "Q4", "Gradient cosine"]
    assert "sam_full − sam_last is +10.00 F1 at k = 4 (95 % CI [7.52, 12.48], p = 0.003, n = 3)" in lines[0]
    assert "a line in log2 k fits it with slope +10.00 F1 per doubling of k" in lines[0]
    assert (
        "sam_last − the control is +0.33 F1 at k = 4" in lines[1]
        and "no k differs from SAM on N/k examples" in lines[1]
    )
    assert "+4.50 F1 (95 % CI [-1.85, 10.85]" in lines[2] and "-5.50 in λmax" in lines[2]
    assert "not significant, so it neither confirms nor contradicts them" in lines[2]  # 4.5 ± 6.35 spans 0
    q4 = "+0.00 F1 (95 % CI [-12.71, 12.71], p = 1.000, n = 2): no significant difference, but the interval"
    assert q4 + " is too wide to show them equal" in lines[3]
    assert "0.70 at k = 4 (floor 0.50)" in lines[4]
    md = result["md"].read_text(encoding="utf-8")
    assert text.strip() in md and "![gap against k](figures/dose_gap.png)" in md
    assert {p.name for p in (sweep / "report-dose" / "figures").iterdir()} == {
        f"dose_{n}.png" for n in ("gap", "control_curves", "examples", "micro", "grad_cos")
    }


def test_a_run_off_the_fixed_window_is_refused_by_name(sweep):
    _write_run(sweep / "runs" / "dose", "sam_last", 8, 8, 0, 50.0)  # 64 examples per update, not 32
    with pytest.raises(DoseError, match=r"run sam_last-k8-b8-s0: window 64 examples .* has 32"):
        dose.build(sweep)
    assert dose.main([f"results_dir={sweep}"]) == 2


def test_failed_runs_have_no_role(sweep):
    _write_run(sweep / "runs" / "dose", "sam_last", 8, 4, 0, 10.0, status="failed")
    cells = tables.roles(dose.load_frames(sweep, "dose")[0])
    assert "sam_last-k8-b4-s0" not in set(cells["run_id"])
    assert set(cells["role"]) == {"reference", "control", "bug", "micro", "sam_full"}


def test_readme_quotes_the_committed_dose_headline():
    headline = (REPO / "results" / "report-dose" / "dose_headline.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    marker = "<!-- dose: results/report-dose/dose_headline.md -->"
    assert readme.count(marker) == 1
    quoted = readme.split(marker)[1].split("<!-- /dose -->")[0].strip()
    assert quoted == headline.strip(), "README's dose answers differ from results/report-dose/dose_headline.md"
