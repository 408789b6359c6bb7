"""The fast loop: dynamic padding, the masked QA loss, fused AdamW, length-sorted evaluation, the dev subset of
periodic evaluations and the time breakdown in summary.json."""

import copy
import json
import math

import pytest
import torch

from experiments.batches import Features, columns_of, padded_length, subset_rows, to_features
from experiments.config import load_config
from experiments.data.features import FEATURE_COLUMNS, MODEL_INPUTS
from experiments.model import load_model, load_tokenizer
from experiments.optim_setup import build_optimizer
from experiments.qa_loss import span_loss
from experiments.train import main
from experiments.trainer import Trainer
from tests.conftest import SMOKE, arm_file, run_dirs


def _events(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _summary(run):
    return json.loads((run / "summary.json").read_text())


# ------------------------------------------------------------------------------------------------------------------
# padding arithmetic


@pytest.mark.parametrize(
    "longest,max_len,expected",
    [(1, 128, 8), (8, 128, 8), (9, 128, 16), (121, 128, 128), (128, 128, 128), (99, 100, 100), (33, 36, 36)],
)
def test_padded_length_rounds_up_to_a_multiple_of_8_capped_at_max_seq_length(longest, max_len, expected):
    assert padded_length(longest, max_len) == expected


def test_a_batch_is_as_wide_as_its_longest_feature_rounded_up():
    ids = torch.zeros(3, 32, dtype=torch.long)
    mask = torch.zeros(3, 32, dtype=torch.long)
    for row, n in enumerate((5, 17, 9)):
        ids[row, :n] = torch.arange(1, n + 1)
        mask[row, :n] = 1
    tensors = {"input_ids": ids, "attention_mask": mask, "start_positions": torch.tensor([1, 2, 3])}
    feats = Features(tensors, mask.sum(1))
    b = feats.batch(torch.tensor([0, 2]), "cpu")  # longest 9 -> 16 columns
    assert b["input_ids"].shape == (2, 16) and b["start_positions"].tolist() == [1, 3]
    assert torch.equal(b["input_ids"], ids[[0, 2], :16])
    assert feats.batch(torch.tensor([1]), "cpu")["attention_mask"].shape == (1, 24)
    fixed = Features(tensors, mask.sum(1), pad_to_max_length=True)
    assert fixed.batch(torch.tensor([0]), "cpu")["input_ids"].shape == (1, 32)
    # evaluation batches: every feature once, longest first
    order = torch.cat(feats.eval_batches(2)).tolist()
    assert order == [1, 2, 0]


# ------------------------------------------------------------------------------------------------------------------
# the masked loss


def _masked_nll_by_hand(logits, mask, label):
    """−log( exp(x_label) / Σ_{t: mask_t = 1} exp(x_t) ), one row, written out."""
    real = [float(x) for x, m in zip(logits, mask) if m]
    top = max(real)
    log_z = top + math.log(sum(math.exp(x - top) for x in real))
    return log_z - float(logits[label])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_span_loss_is_the_cross_entropy_over_real_tokens_only(dtype):
    g = torch.Generator().manual_seed(0)
    start = (torch.randn(3, 10, generator=g) * 3).to(dtype)
    end = (torch.randn(3, 10, generator=g) * 3).to(dtype)
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7])
    starts, ends = torch.tensor([0, 5, 2]), torch.tensor([9, 5, 1])
    expected = (
        sum(
            (
                _masked_nll_by_hand(start[i].float(), mask[i], starts[i])
                + _masked_nll_by_hand(end[i].float(), mask[i], ends[i])
            )
            / 2
            for i in range(3)
        )
        / 3
    )
    got = span_loss(start, end, mask, starts, ends)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # padding logits can be anything: the loss does not see them
    noisy_start, noisy_end = start.clone(), end.clone()
    noisy_start[mask == 0], noisy_end[mask == 0] = 50.0, -50.0
    assert float(span_loss(noisy_start, noisy_end, mask, starts, ends)) == pytest.approx(expected, rel=1e-6)


def _smoke_features(max_seq_length=128):
    cfg = load_config(
        [SMOKE],
        [
            "model.name_or_path=embedded",
            f"data.max_seq_length={max_seq_length}",
            "data.doc_stride=32",
            "data.generated.n_train=16",
            "data.generated.n_dev=8",
        ],
    )
    from experiments.data import load_examples, prepare_train_features

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    train, _, _ = load_examples(cfg.data)
    ds = prepare_train_features(train, tokenizer, cfg.data.max_seq_length, cfg.data.doc_stride)
    return cfg, tokenizer, ds


def test_build_features_is_the_tokenised_data_of_the_config_with_every_feature_column():
    """build_features: the examples load_examples reads, tokenised by prepare_features, held as tensors of
    FEATURE_COLUMNS, with the kept dev examples' columns and the feature counts in the stats."""
    from experiments.data import load_examples, prepare_features
    from experiments.run_data import EXAMPLE_COLUMNS, build_features

    cfg = load_config([SMOKE], ["model.name_or_path=embedded", "data.generated.n_train=16", "data.generated.n_dev=8"])
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    data = build_features(cfg.data, tokenizer)
    train_ex, dev_ex, stats = load_examples(cfg.data)
    _, dev_kept, train_ds, dev_ds = prepare_features(cfg.data, tokenizer, train_ex, dev_ex, stats)
    assert tuple(data.train.tensors) == FEATURE_COLUMNS
    assert set(MODEL_INPUTS) <= set(data.dev.tensors) <= set(FEATURE_COLUMNS)
    for name in FEATURE_COLUMNS:
        assert torch.equal(data.train.tensors[name], torch.tensor(train_ds[name], dtype=torch.int64))
    assert torch.equal(data.dev.tensors["input_ids"], torch.tensor(dev_ds["input_ids"], dtype=torch.int64))
    assert tuple(data.dev_examples) == EXAMPLE_COLUMNS and data.dev_examples["id"] == dev_kept["id"]
    assert (data.stats["train_features"], data.stats["dev_features"]) == (len(train_ds), len(dev_ds))
    assert data.train.pad_to_max_length == cfg.data.pad_to_max_length
    assert build_features(cfg.data, tokenizer, pad_to_max_length=True).train.pad_to_max_length


@pytest.mark.slow
def test_the_same_micro_batch_padded_to_128_or_to_its_length_gives_the_same_loss_and_gradients():
    """With the masked loss the padding of a batch changes nothing (≤ 1e-6 on the loss, ≤ 1e-5 on gradients), on
    the embedded MiniLM; HF's own QA loss, which puts padding in the softmax, does change."""
    cfg, tokenizer, ds = _smoke_features(128)
    fixed = to_features(ds, FEATURE_COLUMNS, pad_to_max_length=True)
    dynamic = to_features(ds, FEATURE_COLUMNS, pad_to_max_length=False)
    index = torch.argsort(fixed.lengths)[:8]  # the 8 shortest features: the most padding
    short, full = dynamic.batch(index, "cpu"), fixed.batch(index, "cpu")
    assert short["input_ids"].shape[1] < 128 and full["input_ids"].shape[1] == 128
    torch.manual_seed(0)
    model = load_model(copy.deepcopy(cfg.model), tokenizer).eval()  # eval: dropout off, same masks both ways

    def loss_and_grads(batch):
        model.zero_grad()
        out = model(**{k: batch[k] for k in MODEL_INPUTS})
        loss = span_loss(
            out.start_logits, out.end_logits, batch["attention_mask"], batch["start_positions"], batch["end_positions"]
        )
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_short, grads_short = loss_and_grads(short)
    loss_full, grads_full = loss_and_grads(full)
    torch.testing.assert_close(loss_short, loss_full, rtol=1e-6, atol=0)
    for a, b in zip(grads_short, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        hf_short = model(**short).loss
        hf_full = model(**full).loss
    assert abs(float(hf_short) - float(hf_full)) > 1e-3  # the class of fault the masked loss removes


# ------------------------------------------------------------------------------------------------------------------
# fused AdamW


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("replay", ["none", "full"])
def test_fused_adamw_gives_the_update_of_the_default_implementation(replay):
    cfg = load_config([], [f"optim.replay={replay}", "optim.lr=0.01"])
    models, optimizers = [], []
    for fused in (False, True):
        model = _tiny_model()
        optimizer = build_optimizer(model, _with(cfg.optim, fused=fused))
        assert bool(optimizer.param_groups[0]["fused"]) is fused
        models.append(model)
        optimizers.append(getattr(optimizer, "base_optimizer", optimizer))
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in models[0].parameters()]
        for model, optimizer in zip(models, optimizers):
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad.clone()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def _with(optim_cfg, **values):
    out = copy.deepcopy(optim_cfg)
    for key, value in values.items():
        setattr(out, key, value)
    return out


def test_fused_is_used_where_torch_has_it_and_required_only_when_asked(monkeypatch):
    from experiments import optim_setup

    cfg = load_config([], [])
    assert cfg.optim.fused is None
    assert build_optimizer(_tiny_model(), cfg.optim).param_groups[0]["fused"] is True  # torch 2.13 has it on CPU
    monkeypatch.setattr(optim_setup, "fused_adamw_available", lambda device: False)
    assert build_optimizer(_tiny_model(), cfg.optim).param_groups[0]["fused"] is False
    with pytest.raises(ValueError, match="optim.fused=true but torch .* has no fused AdamW on cpu"):
        build_optimizer(_tiny_model(), _with(cfg.optim, fused=True))


# ------------------------------------------------------------------------------------------------------------------
# dynamic vs fixed padding end to end, length-sorted evaluation


@pytest.mark.slow
def test_dynamic_and_fixed_padding_runs_agree_on_losses_predictions_and_scores(tiny_run, tmp_path):
    common = (
        "model.dropout=0",
        "train.epochs=1",
        "data.generated.n_train=24",
        "data.max_seq_length=128",
        "data.doc_stride=32",
        "optim.lr=3e-3",
    )
    assert main(tiny_run("sam_full", *common, "run_name=dynamic")) == 0
    assert main(tiny_run("sam_full", *common, "run_name=fixed", "data.pad_to_max_length=true")) == 0
    dynamic, fixed = (tmp_path / "runs" / "adhoc" / n for n in ("dynamic", "fixed"))
    a, b = _summary(dynamic)["final"], _summary(fixed)["final"]
    assert a["dev/loss"] == pytest.approx(b["dev/loss"], rel=1e-5)
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    assert (a["dev/em"], a["dev/f1"]) == (b["dev/em"], b["dev/f1"])
    assert json.loads((dynamic / "predictions.json").read_text()) == json.loads(
        (fixed / "predictions.json").read_text()
    )
    losses = lambda run: [e["train/loss"] for e in _events(run) if "train/loss" in e]  # noqa: E731
    assert losses(dynamic) == pytest.approx(losses(fixed), rel=1e-5)


def test_length_sorted_evaluation_maps_every_answer_to_its_example(tmp_path):
    """Trainer.evaluate (length-sorted, dynamically padded batches) gives the predictions of a plain evaluation:
    one feature at a time, in dataset order, padded to max_seq_length."""
    from experiments.qa_postprocess import postprocess_predictions
    from experiments.tracking import RunTracker

    cfg = load_config(
        [SMOKE, arm_file("adamw")],
        [
            f"results_dir={tmp_path}",
            "tracking.mode=disabled",
            "data.generated.n_train=8",
            "data.generated.n_dev=16",
            "data.max_seq_length=96",
            "data.doc_stride=16",
            "train.eval_batch_size=5",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    assert len(set(trainer.dev.lengths.tolist())) > 3  # lengths vary, so sorting reorders
    trainer.tracker = RunTracker(cfg, tmp_path / "run")
    got = trainer.evaluate("final")
    predicted = json.loads((tmp_path / "run" / "predictions.json").read_text())
    fixed = to_features(trainer.dev.dataset, FEATURE_COLUMNS, pad_to_max_length=True)
    trainer.model.eval()
    with torch.no_grad():
        outs = [
            trainer.model(**{k: v for k, v in fixed.batch(torch.tensor([i]), "cpu").items() if k in MODEL_INPUTS})
            for i in range(len(fixed))
        ]
    starts = torch.cat([o.start_logits for o in outs]).numpy()
    ends = torch.cat([o.end_logits for o in outs]).numpy()
    expected = postprocess_predictions(trainer.dev_examples, fixed.dataset, starts, ends)
    assert predicted == expected
    assert set(predicted) == set(trainer.dev_examples["id"]) and got["eval/examples"] == 16
    trainer.tracker.finish()


# ------------------------------------------------------------------------------------------------------------------
# periodic evaluations on a fixed dev subset; the time breakdown


def test_subset_rows_depends_only_on_its_seed_and_keeps_every_feature_of_a_chosen_example():
    example_ids = [f"q{i}" for i in range(10)]
    feature_ids = ["q0", "q1", "q1", "q2", "q3", "q3", "q3", "q4", "q5", "q6", "q7", "q8", "q9"]
    examples, rows = subset_rows(example_ids, feature_ids, 4, seed=7)
    assert len(examples) == 4 and examples == sorted(examples)
    assert rows == [i for i, ex in enumerate(feature_ids) if ex in {example_ids[j] for j in examples}]
    assert subset_rows(example_ids, feature_ids, 4, seed=7) == (examples, rows)
    assert subset_rows(example_ids, feature_ids, 4, seed=8)[0] != examples
    assert subset_rows(example_ids, feature_ids, None, seed=7) == (list(range(10)), list(range(13)))
    assert subset_rows(example_ids, feature_ids, 99, seed=7)[0] == list(range(10))


def test_eval_columns_are_python_lists_read_once_and_select_keeps_row_order():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict(
        {
            "example_id": ["a", "b", "c"],
            "offset_mapping": [[[0, 1]], [[0, 2], [2, 3]], [[1, 4]]],
            "input_ids": [[1, 0], [2, 3], [4, 0]],
            "attention_mask": [[1, 0], [1, 1], [1, 0]],
        }
    )
    columns = columns_of(dataset, ("example_id", "offset_mapping", "not_there"))
    # lists, not datasets' lazy Column (which converts from Arrow again at every pass)
    assert {name: type(column) for name, column in columns.items()} == {"example_id": list, "offset_mapping": list}
    assert columns.column_names == ["example_id", "offset_mapping"] and columns.num_rows == 3
    picked = columns.select([2, 0])
    assert picked == {"example_id": ["c", "a"], "offset_mapping": [[[1, 4]], [[0, 1]]]}
    features = to_features(dataset, ["input_ids", "attention_mask"])
    assert features.eval_columns() is features.eval_columns()  # converted once
    assert type(features.eval_columns()["offset_mapping"]) is list


def test_periodic_evaluations_score_the_subset_and_the_final_one_the_whole_dev_set(tiny_run, tmp_path):
    assert (
        main(
            tiny_run(
                "sam_full",
                "train.epochs=1",
                "data.generated.n_dev=12",
                "train.eval_every=2",
                "eval.subset_size=5",
                "train.max_updates=5",
            )
        )
        == 0
    )
    run = run_dirs(tmp_path)[0]
    evals = [e for e in _events(run) if "dev/f1" in e]
    assert [(e["update"], e["eval/kind"], e["eval/subset"], e["eval/examples"]) for e in evals] == [
        (2, "periodic", True, 5),
        (4, "periodic", True, 5),
        (5, "final", False, 12),
    ]
    s = _summary(run)
    assert s["best"]["update"] == 5 and s["best"]["eval/examples"] == 12  # the best is chosen on the whole set
    assert s["data"]["dev_subset_examples"] == 5
    assert len(json.loads((run / "predictions.json").read_text())) == 12
    t = s["time"]
    assert t["evaluations"] == 3
    # the training time is the sum of the logged per-update step times; evaluation and checkpoints took time too
    step_times = [e["train/step_time"] for e in _events(run) if "train/step_time" in e]
    assert len(step_times) == 5 and t["train_steps_s"] == pytest.approx(sum(step_times), abs=2e-3)
    # save_model writes the best and the final model (checkpoints_s > 0); the diagnostic is off
    assert t["eval_s"] > 0 and t["checkpoints_s"] > 0 and t["diagnostics_s"] == 0
    assert t["train_steps_s"] + t["eval_s"] + t["checkpoints_s"] <= s["wall_time_s"] + 2e-3
    # eval_s is rounded to the millisecond, the share to 1e-4
    assert t["eval_share"] == pytest.approx(t["eval_s"] / s["wall_time_s"], abs=0.0006 / s["wall_time_s"] + 1e-4)
    assert s["optimizer"]["fused_adamw"] is True


def test_a_subset_without_periodic_evaluations_is_reported_as_having_no_effect(tiny_run, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert main(tiny_run("adamw", "train.max_updates=1", "eval.subset_size=3")) == 0
    assert "eval.subset_size=3 has no effect with train.eval_every=0" in caplog.text
    assert "dev_subset_examples" not in _summary(run_dirs(tmp_path)[0])["data"]
