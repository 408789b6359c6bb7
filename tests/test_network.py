"""Every network touch fails within seconds, with one line saying what to set, when the network is away.

The network is faked away the way a machine without it behaves: every name lookup fails (socket.getaddrinfo raises
gaierror, as on this CPU machine), and the Hugging Face offline variables are unset, which is the case that used to
retry for about 50 s.
"""

import socket
import time

import pytest

from experiments import network, tracking
from experiments.config import load_config
from experiments.model import ModelError, load_tokenizer
from experiments.train import main

LIMIT_S = 10.0  # a generous bound: the probe gives up after 3 s, a name lookup that fails at once far sooner


@pytest.fixture
def no_network(monkeypatch):
    from huggingface_hub import constants

    def no_lookup(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import: unset it where the libraries look
    monkeypatch.setattr(network, "_hub_answers", {})  # no answer remembered from before the network went away


def test_a_hub_model_name_fails_in_seconds_with_the_offline_variables_unset(no_network):
    began = time.perf_counter()
    with pytest.raises(ModelError) as info:
        load_tokenizer("sam-accum-tests/no-such-model")
    assert time.perf_counter() - began < LIMIT_S
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "model.name_or_path='sam-accum-tests/no-such-model' could not be loaded: the hub "
        "(https://huggingface.co) is not reachable within 3 s and the local cache has no copy"
    )
    assert "model.name_or_path=embedded" in message


def test_the_training_cli_refuses_a_hub_model_in_seconds(tiny_run, tmp_path, capsys, no_network):
    began = time.perf_counter()
    assert main(tiny_run("sam_full", "model.name_or_path=sam-accum-tests/no-such-model")) == 2
    assert time.perf_counter() - began < LIMIT_S
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model.name_or_path='sam-accum-tests/no-such-model' could not be loaded: the hub")
    assert not (tmp_path / "runs").exists()


def test_online_tracking_is_refused_in_seconds_before_anything_loads(tiny_run, tmp_path, capsys, no_network):
    began = time.perf_counter()
    assert main(tiny_run("sam_full", "tracking.mode=online")) == 2
    assert time.perf_counter() - began < LIMIT_S
    err = capsys.readouterr().err.strip().splitlines()
    # (the fixture's tracking.mode=disabled is overridden: the config says which override won, then the refusal)
    assert err == [
        "config: override 'tracking.mode=online' replaces override 'tracking.mode=disabled' (a later override wins)",
        "error: tracking.mode=online but the W&B server https://api.wandb.ai is not reachable within 3 s; "
        "use tracking.mode=offline (upload later with make sync) or set WANDB_BASE_URL",
    ]
    assert not (tmp_path / "runs").exists()


def test_the_tracker_itself_fails_online_in_seconds_and_records_why(tmp_path, no_network):
    cfg = load_config([], ["tracking.mode=online"])
    began = time.perf_counter()
    with pytest.raises(tracking.TrackingError, match="is not reachable within 3 s; use tracking.mode=offline"):
        tracking.RunTracker(cfg, tmp_path / "run")
    assert time.perf_counter() - began < LIMIT_S
    assert '"status": "failed"' in (tmp_path / "run" / "summary.json").read_text()


def test_sync_fails_in_seconds_with_one_line_and_leaves_the_runs(tmp_path, capsys, no_network, monkeypatch):
    from experiments import sync

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key is set: the case that used to hang with no output
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    run = tmp_path / "runs" / "adhoc" / "r1" / "wandb" / "offline-run-20250101_000000-abc"
    run.mkdir(parents=True)
    began = time.perf_counter()
    assert sync.main([str(tmp_path)]) == 1
    assert time.perf_counter() - began < LIMIT_S
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the W&B server https://api.wandb.ai is not reachable within 3 s")
    assert "the 1 offline runs stay under" in err[0] and run.is_dir()
    assert sync.main([str(tmp_path / "empty")]) == 0
    assert "no offline W&B runs under" in capsys.readouterr().out


def test_the_probe_is_bounded_even_when_the_name_lookup_hangs(monkeypatch):
    def slow_lookup(*args, **kwargs):
        time.sleep(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    began = time.perf_counter()
    assert network.reachable("https://huggingface.co", timeout=0.5) is False
    assert time.perf_counter() - began < 2.0
    assert network.reachable("not a url") is False


def test_local_and_embedded_models_never_probe(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from experiments.model import hub_access

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def fail(*args, **kwargs):
        raise AssertionError("probed the network for a local model")

    monkeypatch.setattr(network, "reachable", fail)
    assert hub_access("embedded", "/anywhere") == {}
    assert hub_access(str(tmp_path), str(tmp_path)) == {}


def test_the_sam_benchmark_refuses_a_hub_model_in_seconds(no_network):
    from experiments.bench_common import load_bench_model

    began = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        load_bench_model("sam-accum-tests/no-such-model", 64)
    assert time.perf_counter() - began < LIMIT_S
    assert str(info.value) == (
        "error: --model 'sam-accum-tests/no-such-model' could not be loaded (the hub is not "
        "reachable and the local cache has no copy); use --model embedded, tiny or a local folder"
    )
