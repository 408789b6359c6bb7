"""experiments/bench_train.py on the tiny random BERT: the whole code path and its JSON, the SQuAD-like data, the FLOP
count of the MFU formula."""

import json
import math

import pytest
import torch

from experiments import bench_train
from experiments.model import load_tokenizer, tiny_config


def test_squad_like_contexts_keep_their_answers_and_have_squad_like_lengths():
    tokenizer = load_tokenizer("embedded")
    records = bench_train.squad_like_records(200, tokenizer, seed=3)
    assert len(records) == 200
    for r in records:
        start, text = r["answers"]["answer_start"][0], r["answers"]["text"][0]
        assert r["context"][start : start + len(text)] == text
    lengths = sorted(
        len(ids) for ids in tokenizer([r["context"] for r in records], add_special_tokens=False)["input_ids"]
    )
    median = lengths[len(lengths) // 2]
    assert 110 <= median <= 175  # LogNormal(ln 137, 0.42): the sample median of 200 draws lies well inside this
    assert lengths[0] >= 24


@pytest.mark.slow
def test_tiny_bench_writes_every_case(tmp_path):
    out = tmp_path / "bench" / "train.json"
    threads = torch.get_num_threads()
    try:
        returned = bench_train.main(
            [
                "--cases",
                "default",
                "squad384",
                "sam_default",
                "--model",
                "tiny-random-bert",
                "--updates",
                "2",
                "--warmup",
                "1",
                "--squad-examples",
                "120",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert len(result["env"]["git"]["sha"]) == 40 and result["env"]["device"]["type"] == "cpu"
    for name in ("default", "squad384", "sam_default"):
        case = result["cases"][name]
        assert len(case["peer_seconds_per_update"]) == len(case["product_seconds_per_update"]) == 3
        # examples/s = features per update / median seconds of the measured updates (the warm-up one dropped)
        product_s = sorted(case["product_seconds_per_update"][1:])
        assert case["product_examples_per_s"] == pytest.approx(32 / (sum(product_s) / 2), rel=2e-3)
        assert case["ratio_vs_peer"] == pytest.approx(
            case["product_examples_per_s"] / case["peer_examples_per_s"], rel=2e-3
        )
        assert 0 < case["product_token_share"] <= 1
    for name in ("default", "squad384"):
        case = result["cases"][name]
        assert case["peer"] == "hf_trainer" and case["ratio_vs_hf_trainer"] == case["ratio_vs_peer"]
        assert case["hf_trainer_examples_per_s"] == case["peer_examples_per_s"]
        assert case["peer_facts"]["fused"] is True  # HF's default optimizer is fused AdamW with torch >= 2.8
    squad = result["cases"]["squad384"]
    assert squad["config"]["max_seq_length"] == 384 and 0.45 <= squad["padding_share_at_max_length"] <= 0.65
    assert result["cases"]["sam_default"]["peer"] == "sam_loop"


def test_model_flops_per_update_is_the_palm_formula_on_real_tokens():
    from transformers import BertForQuestionAnswering

    config = tiny_config(vocab_size=100)  # 2 layers, hidden 32, intermediate 64
    model = BertForQuestionAnswering(config)
    per_layer = 4 * (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32  # attention, LNs, FFN
    n_params = 2 * per_layer + (32 * 2 + 2)  # encoder layers + QA head; embeddings are left out
    assert n_params == sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    lengths = [10, 3]
    expected = sum(6 * n_params * t + 12 * 2 * 32 * t * t for t in lengths)
    assert bench_train.model_flops_per_update(model, lengths) == expected
    assert math.isfinite(expected)


def test_the_product_side_trains_the_model_the_bench_swapped_in(tmp_path, monkeypatch):
    """--model bert-base-random swaps a model in (Trainer.set_model): the timed update must train that model (a swap
    that left the forward on the old model once timed the wrong model and an optimizer with no gradients). A tiny
    BERT stands in for bert-base here."""
    from transformers import BertForQuestionAnswering

    made = []

    def tiny_stand_in(tokenizer):
        made.append(BertForQuestionAnswering(tiny_config(len(tokenizer))))
        return made[-1]

    monkeypatch.setattr(bench_train, "bert_base_random", tiny_stand_in)
    args = bench_train.parse_args(
        ["--model", "bert-base-random", "--cases", "default", "--updates", "1", "--warmup", "0"]
    )
    cfg = bench_train.case_config("default", args, tmp_path, load_tokenizer("embedded"))
    trainer = bench_train.build_trainer(cfg, tmp_path, args)
    (swapped,) = made
    assert trainer.model is swapped and trainer.train_forward is swapped
    before = [p.detach().clone() for p in swapped.parameters()]
    assert bench_train.product_updates(trainer)() > 0
    moved = [not torch.equal(a, b) for a, b in zip(before, swapped.parameters())]
    assert all(moved), f"{moved.count(False)} of {len(moved)} parameters did not move"


def test_computed_token_share_counts_each_micro_batch_at_its_padded_width():
    from experiments.batches import Features

    # max_seq_length 32; lengths 5, 30, 9, 16: micro-batches [5, 30] -> width 32, [9, 16] -> width 16
    lengths = torch.tensor([5, 30, 9, 16])
    mask = (torch.arange(32)[None, :] < lengths[:, None]).long()
    features = Features({"input_ids": mask.clone(), "attention_mask": mask}, lengths, None, False, False)
    windows = [[torch.tensor([0, 1]), torch.tensor([2, 3])]]
    # (32·2 + 16·2) / (32·4) = 96 / 128
    assert bench_train.computed_token_share(features, windows) == pytest.approx(0.75)
    features_fixed = Features({"input_ids": mask.clone(), "attention_mask": mask}, lengths, None, True, False)
    assert bench_train.computed_token_share(features_fixed, windows) == 1.0  # pad_to_max_length=true
