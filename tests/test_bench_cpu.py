"""experiments.bench_cpu (`make bench-cpu`): the pass's FLOPs by the PaLM count written out, the ratio to the peak
measured in the same run, and the JSON it writes."""

import json
import statistics

import pytest

from experiments.bench_cpu import main
from tests.conftest import TINY_NON_EMBEDDING_PARAMS


@pytest.mark.slow
def test_bench_cpu_reports_the_pass_against_the_peak_of_the_same_run(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    result = main(
        ["--model", "tiny", "--micro-batch", "4", "--seq", "64", "--rounds", "2", "--passes", "1", "--out", str(out)]
    )
    # 4 features of 64 tokens, each 6 · N · t + 12 · L · d · t² (L = 2 layers, d = 32)
    assert result["flop_per_pass"] == 4 * (6 * TINY_NON_EMBEDDING_PARAMS * 64 + 12 * 2 * 32 * 64**2)
    assert len(result["pass_s_rounds"]) == len(result["sgemm_peak_rounds"]) == 2
    assert result["pass_s"] == statistics.median(result["pass_s_rounds"])
    assert result["sgemm_peak_gflops"] == statistics.median(result["sgemm_peak_rounds"])
    assert result["achieved_gflops"] == pytest.approx(result["flop_per_pass"] / result["pass_s"] / 1e9)
    assert result["share_of_peak"] == pytest.approx(result["achieved_gflops"] / result["sgemm_peak_gflops"])
    assert result["sgemm_peak_gflops"] > 0 and result["settings"]["threads"] == 1
    assert json.loads(out.read_text())["share_of_peak"] == pytest.approx(result["share_of_peak"])
    line = capsys.readouterr().out
    assert f"{100 * result['share_of_peak']:.0f} % of the peak" in line


def test_bad_sizes_are_refused(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--rounds", "0"])
    assert err.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err
