"""The README's numbers come from committed results: its one-sentence answer is the committed report's, word for word."""
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
