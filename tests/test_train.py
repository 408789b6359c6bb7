"""The training entry point end to end on the tiny model: every arm, evaluation, run directory, failures."""

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from experiments.batches import epoch_windows
from experiments.config import config_hash, load_config
from experiments.schema import Config
from experiments.train import main
from tests.conftest import REPO, SMOKE, arm_file, run_dirs

ARMS = ["adamw", "sam_full", "sam_last", "sam_micro"]


def only_run(results_dir) -> Path:
    dirs = run_dirs(results_dir)
    assert len(dirs) == 1, dirs
    return dirs[0]


def events(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# ------------------------------------------------------------------------------------------------------------------
# configs


def _flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def test_default_yaml_holds_every_key_of_the_schema_with_its_default():
    schema = _flatten(OmegaConf.to_container(OmegaConf.structured(Config)))
    default = _flatten(OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "default.yaml")))
    assert default == schema


GROUP_FILES = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "configs").rglob("*.yaml")
    if p.parent.name in ("arm", "data", "model", "configs")
)


@pytest.mark.parametrize("path", GROUP_FILES)
def test_every_config_file_loads_on_top_of_the_default(path):
    cfg = load_config([REPO / "configs" / "default.yaml", REPO / path])
    assert config_hash(cfg)
    if "/arm/" in path:
        assert cfg.arm == Path(path).stem


def test_group_files_compose_in_any_order():
    """Files of different groups (arm, model, data) never disagree on a key, so their order on the command line
    cannot matter. The arm files once restated optim.lr = 3e-4: `default + model/bert_base + arm/sam_full` trained
    at 3e-4 and `default + arm/sam_full + model/bert_base` at 3e-5, and `make smoke` (smoke.yaml sets lr 1e-3, then
    the arm file) never ran at smoke.yaml's lr."""
    import itertools

    import yaml

    def keys(path):
        return _flatten(yaml.safe_load((REPO / path).read_text()) or {})

    groups = [p for p in GROUP_FILES if p.split("/")[1] in ("arm", "data", "model")] + ["configs/smoke.yaml"]
    for a, b in itertools.combinations(groups, 2):
        if a.split("/")[1] == b.split("/")[1]:
            continue  # two files of one group are alternatives, never combined
        ka, kb = keys(a), keys(b)
        if "configs/smoke.yaml" in (a, b) and "/arm/" not in a + b:
            continue  # smoke.yaml is a base like default.yaml: only the arm files go on top of it
        clash = {k: (ka[k], kb[k]) for k in ka.keys() & kb.keys() if ka[k] != kb[k]}
        assert not clash, f"{a} and {b} disagree on {clash}: their order would decide"
    # what an arm file sets: the arm's name and its replay mode, nothing a base or model file tunes
    for path in (p for p in groups if "/arm/" in p):
        assert set(keys(path)) == {"arm", "optim.replay"}, path
    smoke = load_config(
        [REPO / "configs" / "default.yaml", REPO / "configs" / "smoke.yaml", REPO / "configs" / "arm" / "sam_full.yaml"]
    )
    assert smoke.optim.lr == pytest.approx(1e-3)
    for order in (("arm/sam_full.yaml", "model/bert_base.yaml"), ("model/bert_base.yaml", "arm/sam_full.yaml")):
        cfg = load_config([REPO / "configs" / "default.yaml", *(REPO / "configs" / f for f in order)])
        assert cfg.optim.lr == pytest.approx(3e-5) and cfg.optim.rho == pytest.approx(0.05)


# ------------------------------------------------------------------------------------------------------------------
# data order


@pytest.mark.parametrize("n,mbs,k", [(10, 3, 2), (12, 3, 2), (7, 4, 4), (5, 8, 2)])
def test_epoch_windows_cover_every_feature_once_and_keep_the_partial_window(n, mbs, k):
    windows = epoch_windows(n, mbs, k, seed=0, epoch=0)
    flat = [int(i) for w in windows for mb in w for i in mb]
    assert sorted(flat) == list(range(n))  # nothing leaks into the next epoch, nothing repeats
    micro = math.ceil(n / mbs)
    assert len(windows) == math.ceil(micro / k)
    assert [len(w) for w in windows[:-1]] == [k] * (len(windows) - 1)
    assert len(windows[-1]) == micro - k * (len(windows) - 1)  # the partial window is an update of its own
    as_lists = lambda ws: [[t.tolist() for t in w] for w in ws]  # noqa: E731
    assert as_lists(epoch_windows(n, mbs, k, 0, 0)) == as_lists(windows)  # deterministic: resume sees the same
    assert as_lists(epoch_windows(n, mbs, k, 0, 1)) != as_lists(windows)  # a new order every epoch


# ------------------------------------------------------------------------------------------------------------------
# runs


@pytest.mark.parametrize("arm", ARMS)
def test_tiny_run_of_each_arm_completes_and_writes_the_run_directory(tiny_run, tmp_path, arm):
    assert main(tiny_run(arm, "train.max_updates=3", "train.epochs=1")) == 0
    run = only_run(tmp_path)
    s = summary(run)
    assert s["status"] == "completed" and s["reason"] is None
    assert s["updates"] == 3 and s["arm"] == arm
    assert set(s["final"]) >= {"dev/loss", "dev/em", "dev/f1", "train/loss", "update"}
    assert s["config_hash"] == config_hash(load_config([run / "config.yaml"]))
    env = json.loads((run / "env.json").read_text())
    assert len(env["git"]["sha"]) == 40 and env["packages"]["torch"].startswith("2.13")
    evs = events(run)
    train_events = [e for e in evs if "train/loss" in e]
    assert [e["update"] for e in train_events] == [1, 2, 3]
    assert all(
        {"update", "epoch", "examples", "train/lr", "train/grad_norm", "train/step_time"} <= set(e)
        for e in train_events
    )
    assert ("train/perturbed_loss" in train_events[0]) == (arm != "adamw")
    final_eval = [e for e in evs if "dev/f1" in e][-1]
    assert final_eval["eval/kind"] == "final" and final_eval["update"] == 3
    predictions = json.loads((run / "predictions.json").read_text())
    assert len(predictions) == s["data"]["dev_examples"] and all(isinstance(v, str) for v in predictions.values())
    assert (run / "checkpoint" / "final" / "model.safetensors").is_file()
    assert (run / "checkpoint" / "best" / "config.json").is_file()


def test_load_checkpoint_refuses_a_missing_folder_and_a_model_without_its_qa_head(tmp_path):
    """A checkpoint that lacks weights of its own architecture would measure a partly random model: ModelError, one
    line, as for a folder that is not there; a complete one comes back in eval mode with fp32 weights."""
    from transformers import BertForQuestionAnswering, BertModel

    from experiments.model import ModelError, load_checkpoint, tiny_config

    with pytest.raises(ModelError, match="cannot load the checkpoint .*nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    BertModel(tiny_config(64)).save_pretrained(tmp_path / "encoder_only")  # no qa_outputs
    with pytest.raises(ModelError, match="lacks weights of its own architecture: qa_outputs"):
        load_checkpoint(tmp_path / "encoder_only")
    BertForQuestionAnswering(tiny_config(64)).half().save_pretrained(tmp_path / "qa")
    model = load_checkpoint(tmp_path / "qa", attn_implementation="eager")
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config._attn_implementation == "eager"


def test_dev_loss_is_the_mean_of_that_evaluation_not_a_running_average(tiny_run, tmp_path):
    """The copied loop reports mean(dev_step_losses) over ALL epochs so far. Ours: each evaluation's own mean,
    which must equal the dev loss recomputed from the final checkpoint (the weights of the last evaluation)."""
    from experiments.data.features import MODEL_INPUTS
    from experiments.model import load_checkpoint, load_tokenizer
    from experiments.run_data import build_features

    assert main(tiny_run("adamw", "optim.lr=3e-3")) == 0
    run = only_run(tmp_path)
    epoch_evals = [e for e in events(run) if e.get("eval/kind") == "epoch"]
    assert len(epoch_evals) == 2
    assert epoch_evals[0]["dev/loss"] != pytest.approx(epoch_evals[1]["dev/loss"], rel=1e-3)

    cfg = load_config([run / "config.yaml"])
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    feats = build_features(cfg.data, tokenizer, pad_to_max_length=True).dev
    model = load_checkpoint(run / "checkpoint" / "final")
    losses = []
    with torch.no_grad():  # one feature at a time, padded to max_seq_length, softmax over its real tokens only
        for i in range(len(feats)):
            b = feats.batch(torch.tensor([i]), "cpu")
            out = model(**{k: b[k] for k in MODEL_INPUTS})
            real = b["attention_mask"][0].bool()
            nll = [
                -torch.log_softmax(logits[0][real].double(), 0)[int(b[label][0])]
                for logits, label in ((out.start_logits, "start_positions"), (out.end_logits, "end_positions"))
            ]
            losses.append(float(sum(nll) / 2))
    recomputed = sum(losses) / len(losses)
    assert epoch_evals[1]["dev/loss"] == pytest.approx(recomputed, rel=1e-5)
    running_mean = (epoch_evals[0]["dev/loss"] + epoch_evals[1]["dev/loss"]) / 2
    assert summary(run)["final"]["dev/loss"] != pytest.approx(running_mean, rel=1e-4)


def test_one_epoch_consumes_every_train_feature_once_and_counts_examples_not_features(tiny_run, tmp_path):
    assert (
        main(
            tiny_run(
                "sam_full",
                "train.epochs=1",
                "train.micro_batch_size=3",
                "train.accumulation_steps=4",
                "data.generated.long_context_frac=1.0",
            )
        )
        == 0
    )
    run = only_run(tmp_path)
    s = summary(run)
    assert s["data"]["train_features"] > s["data"]["train_examples"]  # long contexts: several windows per example
    assert s["examples"] == s["data"]["train_examples"]  # the step key counts examples, each once per epoch
    assert s["updates"] == math.ceil(math.ceil(s["data"]["train_features"] / 3) / 4)
    counts = [e["examples"] for e in events(run) if "train/loss" in e]
    assert counts == sorted(counts) and counts[-1] == s["data"]["train_examples"]


def test_window_examples_counts_each_example_at_its_first_window_of_the_epoch():
    """Features of examples a, a, b, c, c, c; the epoch's order puts features 1, 3, 0 in the first window and 4, 2, 5
    in the second: the first reaches a and c, the second only b (c was already reached)."""
    from types import SimpleNamespace

    from experiments.trainer import Trainer

    fake = SimpleNamespace(
        train=SimpleNamespace(dataset={"example_id": ["a", "a", "b", "c", "c", "c"]}), _example_index=None
    )
    windows = [[torch.tensor([1, 3]), torch.tensor([0])], [torch.tensor([4, 2]), torch.tensor([5])]]
    assert Trainer.window_examples(fake, windows) == [2, 1]


def test_grad_fidelity_is_logged_and_does_not_change_the_trajectory(tiny_run, tmp_path):
    common = ("train.max_updates=4", "train.epochs=1", "train.accumulation_steps=2")
    assert main(tiny_run("sam_full", *common, "run_name=plain")) == 0
    assert (
        main(
            tiny_run(
                "sam_full",
                *common,
                "run_name=diag",
                "diagnostics.grad_fidelity=true",
                "diagnostics.grad_fidelity_every=2",
            )
        )
        == 0
    )
    plain, diag = (tmp_path / "runs" / "adhoc" / n for n in ("plain", "diag"))
    assert summary(plain)["final"] == summary(diag)["final"]
    cos = [e for e in events(diag) if "diag/grad_cos" in e]
    assert [e["update"] for e in cos] == [1, 3]
    assert all(-1.0 <= e["diag/grad_cos"] < 0.9999 and e["diag/grad_norm_ratio"] > 0 for e in cos)


def test_the_last_only_shortcut_trains_bitwise_the_literal_run(tiny_run, tmp_path):
    """optim.replay_shortcut reaches train_step: a sam_last_only run with it ends with the literal run's numbers (the
    smoke model has dropout, so the dropout stream must also match), under its own run id."""
    from safetensors.torch import load_file

    common = ("train.max_updates=4", "train.epochs=1", "train.accumulation_steps=3")
    assert main(tiny_run("sam_last_only", *common, "run_name=literal")) == 0
    assert main(tiny_run("sam_last_only", *common, "run_name=short", "optim.replay_shortcut=true")) == 0
    literal, short = (tmp_path / "runs" / "adhoc" / n for n in ("literal", "short"))
    assert summary(short)["final"] == summary(literal)["final"]
    weights = [load_file(run / "checkpoint" / "final" / "model.safetensors") for run in (literal, short)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert summary(short)["config_hash"] != summary(literal)["config_hash"]


def test_grad_fidelity_is_exactly_one_when_the_window_has_one_micro_batch(tiny_run, tmp_path):
    assert (
        main(
            tiny_run(
                "sam_last",
                "train.max_updates=2",
                "train.accumulation_steps=1",
                "diagnostics.grad_fidelity=true",
                "diagnostics.grad_fidelity_every=1",
            )
        )
        == 0
    )
    cos = [e for e in events(only_run(tmp_path)) if "diag/grad_cos" in e]
    assert len(cos) == 2
    for e in cos:
        assert e["diag/grad_cos"] == pytest.approx(1.0, abs=1e-6)
        assert e["diag/grad_norm_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_asam_scales_weights_by_name_and_moves_the_zero_bias_of_the_new_qa_head():
    """build_optimizer marks tensors whose name ends in "weight" (LayerNorm scales included) as ASAM weights,
    T = |w| + eta, and every bias as T = 1 (SamsungLabs/ASAM's name rule); the new QA head's bias starts at exactly 0
    and still moves. Checked against e = rho · T²g / ‖Tg‖ written out over the real (tiny) BERT."""
    from experiments.model import load_model, load_tokenizer
    from experiments.optim_setup import build_optimizer

    rho, eta = 0.5, 0.01
    cfg = load_config([SMOKE, arm_file("sam_full")], ["optim.adaptive=true", f"optim.rho={rho}"])
    assert cfg.optim.eta == eta
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    torch.manual_seed(0)
    model = load_model(cfg.model, tokenizer).double().eval()
    named = dict(model.named_parameters())
    assert (named["qa_outputs.bias"] == 0).all()
    optimizer = build_optimizer(model, cfg.optim)
    batch = tokenizer(["who built the ship?"], ["The ship was built by Ada Lind in 1901."], return_tensors="pt")
    model(**batch, start_positions=torch.tensor([9]), end_positions=torch.tensor([10])).loss.backward()
    w = {n: p.detach().clone() for n, p in named.items()}
    g = {n: p.grad.detach().clone() for n, p in named.items()}
    t = {n: (w[n].abs() + eta if n.endswith("weight") else torch.ones_like(w[n])) for n in named}
    norm = torch.sqrt(sum(((t[n] * g[n]) ** 2).sum() for n in named))
    optimizer.first_step()
    for n, p in named.items():
        expected = rho * t[n] * t[n] * g[n] / (norm + 1e-12)
        torch.testing.assert_close(p.detach() - w[n], expected, rtol=1e-9, atol=1e-15, msg=n)
    assert (named["qa_outputs.bias"] != 0).all()
    assert any("LayerNorm.weight" in n for n in named) and sum(n.endswith("bias") for n in named) > 5


@pytest.mark.slow
def test_offline_wandb_run_lives_in_the_run_directory(tiny_run, tmp_path):
    assert main(tiny_run("sam_last", "train.max_updates=2", "tracking.mode=offline")) == 0
    run = only_run(tmp_path)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    records = list(offline[0].glob("*.wandb"))
    assert records and records[0].stat().st_size > 0
    assert summary(run)["wandb"]["mode"] == "offline"


# ------------------------------------------------------------------------------------------------------------------
# bad input: one line, exit code 2, nothing written

BAD_CONFIGS = [
    (["optim.rhoo=0.1"], "unknown config key 'optim.rhoo'"),
    (["optim.rho=big"], "optim.rho"),
    (["optim.replay=half"], "optim.replay='half' is not allowed; choose one of: none, full, last, micro"),
    (["train.accumulation_steps=0"], "train.accumulation_steps=0 is out of range; it must be >= 1"),
    (["optim.warmup_ratio=1.5"], "optim.warmup_ratio=1.5 is out of range"),
    (["tracking.mode=cloud"], "tracking.mode='cloud' is not allowed"),
    (
        ["data.source=files", "data.train_file=/nonexistent/train.json", "data.validation_file=/nonexistent/dev.json"],
        "data.train_file='/nonexistent/train.json': no such file",
    ),
    (["configs/arm/sam_fulll.yaml"], "config file 'configs/arm/sam_fulll.yaml': no such file"),
    (["train.device=cuda"] if not torch.cuda.is_available() else ["train.device=tpu"], "train.device"),
    (["model.name_or_path=bert-base-uncased"], "model.name_or_path='bert-base-uncased' could not be loaded"),
    (["data.source=hub", "data.hub_path=squad"], "data.source=files"),
]


@pytest.mark.parametrize("extra,message", BAD_CONFIGS, ids=[m[:40] for _, m in BAD_CONFIGS])
def test_bad_input_is_refused_with_one_line_and_nothing_written(tiny_run, tmp_path, capsys, extra, message):
    code = main(tiny_run("sam_full", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1], err
    assert not [line for line in err if line.startswith("Traceback")]
    assert not (tmp_path / "runs").exists()


def test_broken_data_file_is_refused_naming_file_and_record(tiny_run, tmp_path, capsys):
    good = REPO / "tests" / "data"
    dev = sorted(good.glob("sample_dev*"))[0]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"id": "q1", "context": "Ana lives in Oslo.", "question": "Where?", '
        '"answers": {"text": ["Oslo"], "answer_start": [3]}}\n'
    )
    code = main(tiny_run("sam_full", "data.source=files", f"data.train_file={broken}", f"data.validation_file={dev}"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "broken.jsonl" in err and "q1" in err and "answer_start" in err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------------------------
# failures are recorded; completed runs are never touched


def test_diverged_run_is_recorded_with_update_and_last_good_metrics(tiny_run, tmp_path):
    assert main(tiny_run("sam_last", "optim.lr=1e30")) == 3
    s = summary(only_run(tmp_path))
    assert s["status"] == "diverged" and "non-finite" in s["reason"]
    assert s["diverged_at"] >= 1
    assert math.isfinite(s["final"]["train/loss"]) or s["diverged_at"] == 1


def test_exception_is_recorded_as_failed_with_traceback(tiny_run, tmp_path, monkeypatch):
    from experiments import trainer as trainer_module

    def broken_eval(self, kind):
        raise RuntimeError("evaluation exploded\nsecond line")

    monkeypatch.setattr(trainer_module.Trainer, "evaluate", broken_eval)
    assert main(tiny_run("adamw", "train.max_updates=2")) == 1
    run = only_run(tmp_path)
    s = summary(run)
    assert s["status"] == "failed" and s["reason"] == "RuntimeError: evaluation exploded"
    assert "Traceback" in (run / "error.log").read_text()


def test_completed_run_is_not_rerun_and_a_different_config_is_refused(tiny_run, tmp_path, capsys):
    args = tiny_run("adamw", "train.max_updates=2", "run_name=fixed")
    assert main(args) == 0
    run = only_run(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert main(args) == 0
    assert "already completed" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    assert main(tiny_run("adamw", "train.max_updates=2", "run_name=fixed", "optim.lr=1e-4")) == 2
    assert "holds a different config" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_arm_label_is_derived_from_replay_and_must_match_it():
    from experiments.config import ConfigError

    assert load_config([REPO / "configs" / "default.yaml"], ["optim.replay=micro"]).arm == "sam_micro"
    assert load_config([arm_file("sam_last")]).arm == "sam_last"
    assert load_config([], ["optim.replay=last", "arm=my_variant", "custom_arm=true"]).arm == "my_variant"
    with pytest.raises(ConfigError, match="arm='sam_full' does not match optim.replay='last'"):
        load_config([arm_file("sam_full")], ["optim.replay=last"])


def test_diverged_run_is_a_result_and_is_not_rerun(tiny_run, tmp_path, capsys):
    args = tiny_run("sam_last", "optim.lr=1e30")
    assert main(args) == 3
    assert main(args) == 3
    assert "already diverged" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# issue 21 item 2: an fp16 update GradScaler skips does not advance the lr schedule


def test_skipped_fp16_updates_do_not_advance_the_lr_schedule(tiny_run, tmp_path, monkeypatch):
    """fp16 autocast on the CPU with a GradScaler starting at 4e5: the scaled gradients overflow fp16 (max 65504) on
    the first three windows (4e5, 2e5, 1e5 after each backoff), so updates 1-3 are skipped; the fourth runs at
    scale 5e4. Warmup 3 of 6 updates, peak 1e-3: lr of the u-th applied update (u = 1, 2, 3) = 1e-3 * u / 3, so the
    first applied one must run at 3.333e-4, as if the skipped ones had never been (HF Trainer's rule)."""
    import functools

    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=4e5))
    args = tiny_run(
        "sam_full",
        "train.precision=fp16",
        "train.device=cpu",
        "data.generated.n_train=48",
        "train.max_updates=6",
        "optim.warmup_ratio=0.5",
        "optim.lr=1e-3",
    )
    assert main(args) == 0
    run = only_run(tmp_path)
    train = [e for e in events(run) if "train/lr" in e]
    skipped = [e["train/skipped"] for e in train]
    assert skipped == [1, 1, 1, 0, 0, 0]
    peak, warmup = 1e-3, 3
    applied_lr = [e["train/lr"] for e in train if not e["train/skipped"]]
    torch.testing.assert_close(applied_lr, [peak * 1 / warmup, peak * 2 / warmup, peak * 3 / warmup])
    assert abs(applied_lr[0] - 3.333e-4) < 1e-7
    # a skipped update ran (and logged) the lr the next applied one gets: the schedule stood still
    torch.testing.assert_close([e["train/lr"] for e in train[:3]], [peak / warmup] * 3)
    s = summary(run)
    assert (s["updates"], s["applied_updates"], s["skipped_updates"]) == (6, 3, 3)


def test_fp32_runs_have_no_skipped_updates_and_the_usual_schedule(tiny_run, tmp_path):
    """fp32 never skips (a non-finite gradient is a divergence): every update steps the schedule as before."""
    assert main(tiny_run("sam_full", "train.max_updates=4", "optim.warmup_ratio=0.5", "optim.lr=1e-3")) == 0
    run = only_run(tmp_path)
    lrs = [e["train/lr"] for e in events(run) if "train/lr" in e]
    # warmup W = round(0.5 * 4) = 2: (u + 1) / W for u < 2, then (4 - u) / (4 - 2)
    torch.testing.assert_close(lrs, [1e-3 * 1 / 2, 1e-3 * 2 / 2, 1e-3 * 2 / 2, 1e-3 * 1 / 2])
    s = summary(run)
    assert (s["updates"], s["applied_updates"], s["skipped_updates"]) == (4, 4, 0)
