"""The README's numbers come from committed results: its one-sentence answer is the committed report's, verbatim."""

from tests.conftest import REPO


def _answer_of(headline: str) -> str:
    return next(line for line in headline.splitlines() if line.startswith("**Answer"))


def test_readme_quotes_the_answer_of_the_committed_report():
    headline = (REPO / "results" / "report" / "headline.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- answer: results/report/headline.md -->") == 1
    quoted = readme.split("<!-- answer: results/report/headline.md -->")[1].split("<!-- /answer -->")[0].strip()
    assert quoted == "> " + _answer_of(headline), "README's answer differs from results/report/headline.md: copy it"
    # the headline is the first section of the committed report
    report = (REPO / "results" / "report" / "REPORT.md").read_text(encoding="utf-8")
    assert report.index("## The answer") < report.index("## Findings") and headline.strip() in report


def test_eval_share_table_is_the_committed_runs_time_blocks():
    import json
    import re

    folder = REPO / "results" / "bench" / "eval_share"
    table = (folder / "README.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    # the README's paragraph that cites these runs
    paragraph = next(p for p in re.split(r"\n(?=- )|\n\n", readme) if "results/bench/eval_share" in p)
    for run in ("before", "after"):
        summary = json.loads((folder / run / "summary.json").read_text(encoding="utf-8"))
        t = summary["time"]
        assert summary["status"] == "completed" and t["evaluations"] >= 10
        row = next(line for line in table.splitlines() if line.startswith(f"| `{run}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == f"{t['eval_s']:.1f} s ({100 * t['eval_share']:.1f} %)"
        assert cells[3] == f"{t['diagnostics_s']:.1f} s ({100 * t['diagnostics_share']:.1f} %)"
        assert cells[4] == f"{summary['wall_time_s']:.1f} s"
        for share in (t["eval_share"], t["diagnostics_share"]):
            assert re.search(rf"\b{100 * share:.1f} %", paragraph), f"README lacks the {run} share {100 * share:.1f} %"


def test_the_tuning_table_quotes_the_committed_tuning_curves():
    """Every `update:F1` point of README's tuning table is a dev F1 of a tuning run at that update, as rounded."""
    import re

    import pandas as pd

    curves = pd.read_csv(REPO / "results" / "tuning" / "curves.csv")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("### How the default ablation was chosen")[1].split("and then whole")[0]
    points = re.findall(r"\b(\d+):(\d+(?:\.\d+)?)\b", table)
    assert len(points) == 14  # the table as written; a new point must be a committed one too
    for update, f1 in points:
        decimals = len(f1.split(".")[1]) if "." in f1 else 0
        at = curves[curves["update"] == int(update)]["dev_f1"].round(decimals)
        assert (at == float(f1)).any(), f"README's {update}:{f1} is no tuning run's dev F1 at update {update}"


def test_the_bench_table_is_the_committed_train_json():
    import json

    bench = json.loads((REPO / "results" / "bench" / "train.json").read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- bench: results/bench/train.json -->")[1].split("<!-- /bench -->")[0]
    rows = [line for line in table.strip().splitlines()[2:]]
    assert len(rows) == len(bench["cases"]) == 4
    for row, (name, case) in zip(rows, bench["cases"].items()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0].split(" ")[0] == name
        assert cells[2:] == [
            f"{100 * case['padding_share_at_max_length']:.1f} %",
            f"{100 * case['product_token_share']:.1f} %",
            f"{case['product_examples_per_s']:.2f}",
            f"{case['peer_examples_per_s']:.2f}",
            f"{case['ratio_vs_peer']:.2f}×",
        ]


def test_the_config_error_the_readme_shows_is_what_train_prints(capsys):
    from experiments.train import main

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = "$ python -m experiments.train configs/default.yaml optim.rhoo=0.1\n"
    shown = readme.split(command)[1].splitlines()[0]
    assert main(["configs/default.yaml", "optim.rhoo=0.1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == shown


def test_the_default_arms_table_is_the_committed_runs_csv():
    import csv

    runs = list(csv.DictReader((REPO / "results" / "report-default_arms" / "runs.csv").open(encoding="utf-8")))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- default_arms: results/report-default_arms/runs.csv -->")[1].split("<!-- /")[0]
    rows = table.strip().splitlines()[2:]
    assert len(rows) == len(runs) == 4
    for row, run in zip(rows, runs):
        wall = float(run["wall_time_s"])
        expected = [
            run["arm"],
            f"{float(run['final.dev/em']):.2f}",
            f"{float(run['final.dev/f1']):.2f}",
            f"{float(run['final.dev/loss']):.3f}",
            f"{int(wall // 60)} min {round(wall % 60)} s",
            f"{float(run['mean_step_time_s']):.2f}",
        ]
        assert [c.strip() for c in row.strip("|").split("|")] == expected
    # the runs were made from a commit, not from uncommitted changes
    assert {run["git_sha"] for run in runs} == {"16925b2e079518fe4a1a927667b60b81293fc100"}
    assert "uncommitted" not in (REPO / "results" / "report-default_arms" / "REPORT.md").read_text(encoding="utf-8")


def test_the_bench_cpu_sentence_is_the_committed_cpu_json():
    import json

    from experiments.bench_cpu import summary_line

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    bench = json.loads((REPO / "results" / "bench" / "cpu.json").read_text(encoding="utf-8"))
    quoted = readme.split("<!-- bench-cpu: results/bench/cpu.json -->")[1].split("<!-- /bench-cpu -->")[0]
    assert quoted.strip() == summary_line(bench) + "."


def test_the_compute_floor_quote_is_the_committed_reports_setup_line():
    """README's Results quote the report's Compute line (the sweep's wall time against its compute floor) word for
    word."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    report = (REPO / "results" / "report" / "REPORT.md").read_text(encoding="utf-8")
    quoted = readme.split("<!-- compute: results/report/REPORT.md -->")[1].split("<!-- /compute -->")[0]
    (line,) = [x for x in report.splitlines() if x.startswith("- **Compute:** ")]
    assert quoted.strip() == "> " + line.removeprefix("- **Compute:** ")
