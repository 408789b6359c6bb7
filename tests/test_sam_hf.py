"""sam.hf.SAMTrainer against SAM written out here (torch.autograd.grad on each window, the same AdamW/SGD step) and
against sam.train_step on the windows the Trainer formed, for every replay mode; the public Trainer pattern against
train_step(replay="last_only"); the token-level (num_items_in_batch) path with a causal LM; the GradScaler path; the
refusals; and 2 gloo ranks under torchrun.

Models: a tiny BERT for extractive QA and a tiny GPT-2, both built from a config (no hub), a handful of parameters.
Windows: per_device_train_batch_size=2, gradient_accumulation_steps=4, sequential sampling, 3 updates. Every test
records what the Trainer handed to each training_step (the micro-batch and the RNG state before its first pass), so
the references see exactly the Trainer's windows and dropout stream.
"""

from __future__ import annotations

import copy
import os
import runpy
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close
from transformers import BertConfig, BertForQuestionAnswering, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from sam import SAM, train_step
from sam.hf import SAMTrainer
from tests.conftest import PYTHON, REPO

RHO = 0.05
LR = 1e-2  # AdamW
SGD_LR = 0.5
K = 4  # gradient_accumulation_steps
MICRO = 2  # per_device_train_batch_size
UPDATES = 3
SEQ = 12
MAX_GRAD_NORM = 0.5
TOL = dict(atol=1e-6, rtol=1e-6)


def tiny_bert_qa(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForQuestionAnswering(config)


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=40, n_positions=SEQ, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.0)
    config.embd_pdrop = config.attn_pdrop = 0.0
    return GPT2LMHeadModel(config)


def qa_dataset(n=UPDATES * K * MICRO, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (n, SEQ), generator=g)
    start = torch.randint(0, SEQ, (n,), generator=g)
    end = torch.randint(0, SEQ, (n,), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "start_positions": start[i]}
        | {"end_positions": end[i]}
        for i in range(n)
    ]


def lm_dataset(n=UPDATES * K * MICRO, seed=2):
    """Causal-LM rows whose number of label tokens varies (-100 masks a random prefix), so micro-batches weigh
    differently in the window's token mean. The prefix is never empty: position 0 predicts nothing, and Trainer 5.24
    counts `num_items_in_batch` over the unshifted labels for a GPT-2 built from a config (its `loss_type` is None,
    so `_loss_shifts_labels` is False), one token too many per row whose first label is not -100."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 40, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: int(torch.randint(1, SEQ - 2, (1,), generator=g))] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": labels})
    return rows


def arguments(tmp_path, **overrides):
    kw = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=K,
        max_steps=UPDATES,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=MAX_GRAD_NORM,
        train_sampling_strategy="sequential",
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    kw.update(overrides)
    return TrainingArguments(**kw)


class Recording:
    """Mixin: remember each micro-batch the Trainer hands over and the CPU RNG state before its first pass."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(({k: v.clone() for k, v in inputs.items()}, torch.get_rng_state()))
        return super().training_step(model, inputs, num_items_in_batch)


class RecordingSAMTrainer(Recording, SAMTrainer):
    pass


def windows_of(seen):
    """[(micro-batches, RNG state before the window's first pass)] per update, from what Recording saw."""
    return [([b for b, _ in seen[w : w + K]], seen[w][1]) for w in range(0, len(seen), K)]


def run_sam_trainer(tmp_path, model, dataset, optimizer_cls=torch.optim.AdamW, args=None, **sam_kwargs):
    trainer = RecordingSAMTrainer(
        model=model,
        args=args or arguments(tmp_path),
        train_dataset=dataset,
        optimizers=(optimizer_cls(model.parameters(), lr=lr_of(optimizer_cls)), None),
        rho=RHO,
        **sam_kwargs,
    )
    trainer.seen = []
    trainer.train()
    return trainer


def lr_of(optimizer_cls):
    return SGD_LR if optimizer_cls is torch.optim.SGD else LR


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def max_differences(got, expected):
    """(max |a - b|, max |a - b| / max |b|) over all tensors."""
    diff = max(float((a - b).abs().max()) for a, b in zip(got, expected))
    scale = max(float(b.abs().max()) for b in expected)
    return diff, diff / scale


def train_step_reference(model, windows, replay, optimizer_cls=torch.optim.AdamW, sizes_fn=None, reuse=True):
    """sam.train_step on the Trainer's windows, each started from the RNG state the Trainer's window started from."""
    opt = SAM(model.parameters(), optimizer_cls, rho=RHO, lr=lr_of(optimizer_cls))
    model.train()
    for batches, rng in windows:
        torch.set_rng_state(rng)
        train_step(
            lambda b: model(**b).loss,
            batches,
            opt,
            replay=replay,
            max_grad_norm=MAX_GRAD_NORM,
            sizes=sizes_fn(batches) if sizes_fn else None,
            reuse_dropout_rng=reuse,
        )
    return params(model)


def written_out_full_sam(model, windows, losses_fn, optimizer_cls=torch.optim.AdamW):
    """Full-window SAM with autograd: g = ∇L(w), e = rho·g/(‖g‖ + 1e-12), g' = ∇L(w + e) with each micro-batch's
    dropout masks of the first pass, clip g' to MAX_GRAD_NORM (torch's rule: × max/(‖g'‖ + 1e-6) if below 1), step.
    `losses_fn(model, batches, states)` returns the window's loss L as the sum of its micro-batches' shares."""
    ps = list(model.parameters())
    opt = optimizer_cls(ps, lr=lr_of(optimizer_cls))
    model.train()
    for batches, rng in windows:
        states = []
        torch.set_rng_state(rng)
        g = torch.autograd.grad(losses_fn(model, batches, states), ps)
        norm = torch.linalg.vector_norm(torch.stack([x.norm() for x in g]))
        e = [RHO * x / (norm + 1e-12) for x in g]
        with torch.no_grad():
            saved = [p.clone() for p in ps]
            for p, d in zip(ps, e):
                p.add_(d)
        g2 = torch.autograd.grad(losses_fn(model, batches, states), ps)
        with torch.no_grad():
            for p, w in zip(ps, saved):
                p.copy_(w)
        norm2 = torch.linalg.vector_norm(torch.stack([x.norm() for x in g2]))
        clip = min(1.0, MAX_GRAD_NORM / (float(norm2) + 1e-6))
        for p, x in zip(ps, g2):
            p.grad = x * clip
        opt.step()
        opt.zero_grad()
    return params(model)


def qa_window_loss(model, batches, states):
    """L = Σ_i (1/k) L_i (equal micro-batches), each L_i run from its RNG state (recorded on the first call,
    restored on the second, so the second pass draws the first pass's masks)."""
    total = 0
    for i, b in enumerate(batches):
        if len(states) < len(batches):
            states.append(torch.get_rng_state())
        else:
            torch.set_rng_state(states[i])
        total = total + model(**b).loss / len(batches)
    return total


# ----------------------------------------------------------------------------------------------------------------------
# single process, tiny BERT-QA


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_full_equals_written_out_window_sam_and_train_step(tmp_path, dropout):
    model = tiny_bert_qa(dropout)
    start = copy.deepcopy(model)
    # SGD: the QA head's bias has a gradient that is 0 in exact arithmetic (softmax ignores a shift of all logits),
    # and AdamW would blow its rounding noise (1e-9) up to ±lr per update in both implementations alike
    trainer = run_sam_trainer(tmp_path, model, qa_dataset(), optimizer_cls=torch.optim.SGD)
    windows = windows_of(trainer.seen)
    assert len(windows) == UPDATES and all(len(b) == K for b, _ in windows)
    got = params(model)
    expected = written_out_full_sam(copy.deepcopy(start), windows, qa_window_loss, optimizer_cls=torch.optim.SGD)
    d = max_differences(got, expected)
    print(f"full vs written-out (dropout={dropout}): max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(got, expected, **TOL)
    assert max_differences(got, params(start))[0] > 1e-4  # the updates moved the weights, far above the tolerance
    via_train_step = train_step_reference(copy.deepcopy(start), windows, "full", optimizer_cls=torch.optim.SGD)
    d = max_differences(got, via_train_step)
    print(f"full vs train_step (dropout={dropout}): max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(got, via_train_step, **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("replay", ["micro", "last", "last_only"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_every_replay_mode_equals_train_step(tmp_path, replay, dropout):
    model = tiny_bert_qa(dropout)
    start = copy.deepcopy(model)
    trainer = run_sam_trainer(tmp_path, model, qa_dataset(), replay=replay)
    got = params(model)
    expected = train_step_reference(copy.deepcopy(start), windows_of(trainer.seen), replay)
    d = max_differences(got, expected)
    print(f"{replay} vs train_step (dropout={dropout}): max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(got, expected, **TOL)


class PublicPatternTrainer(Recording, Trainer):
    """The SAMTrainer pattern that circulates in public code, written out: `training_step` zeroes the gradients,
    runs the first pass on the micro-batch it is handed, perturbs, runs the second pass, restores; the Trainer then
    clips and steps its (base) optimizer with whatever is left after the window."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(({k: v.clone() for k, v in inputs.items()}, torch.get_rng_state()))
        model.train()
        inputs = self._prepare_inputs(inputs)
        model.zero_grad()
        loss = self.compute_loss(model, inputs)
        self.accelerator.backward(loss)
        self.sam.first_step(zero_grad=True)
        self.accelerator.backward(self.compute_loss(model, inputs))  # fresh dropout masks, as the pattern draws
        self.sam.restore()
        return loss.detach() / K


def test_public_pattern_is_last_only_and_far_from_full(tmp_path):
    model = tiny_bert_qa(0.1)
    start = copy.deepcopy(model)
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=LR)
    trainer = PublicPatternTrainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=qa_dataset(),
        optimizers=(sam.base_optimizer, None),
    )
    trainer.sam, trainer.seen = sam, []
    trainer.train()
    got = params(model)
    windows = windows_of(trainer.seen)
    last_only = train_step_reference(copy.deepcopy(start), windows, "last_only", reuse=False)
    d = max_differences(got, last_only)
    print(f"public pattern vs train_step(last_only): max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(got, last_only, **TOL)
    full = train_step_reference(copy.deepcopy(start), windows, "full")
    far = max_differences(got, full)
    print(f"public pattern vs full: max abs {far[0]:.3g}, rel {far[1]:.3g}")
    assert far[0] > 1e3 * max(d[0], 1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# token-level loss: a causal LM with labels, num_items_in_batch counted over the window


def lm_tokens(batch):
    return int(batch["labels"][..., 1:].ne(-100).sum())


def lm_window_loss(model, batches, states):
    """L = Σ_tokens CE / N_window, N_window = the label tokens of the window (shifted: position 0 predicts nothing)."""
    n = sum(lm_tokens(b) for b in batches)
    total = 0
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        total = total + torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
        )
    return total / n


def test_causal_lm_token_counts_scale_both_passes(tmp_path):
    model = tiny_gpt2()
    start = copy.deepcopy(model)
    trainer = run_sam_trainer(tmp_path, model, lm_dataset(), optimizer_cls=torch.optim.SGD)
    windows = windows_of(trainer.seen)
    counts = [[lm_tokens(b) for b in batches] for batches, _ in windows]
    assert any(len(set(c)) > 1 for c in counts), counts  # micro-batches do weigh differently
    got = params(model)
    expected = written_out_full_sam(copy.deepcopy(start), windows, lm_window_loss, optimizer_cls=torch.optim.SGD)
    d = max_differences(got, expected)
    print(f"causal LM full vs written-out: max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(got, expected, **TOL)
    via = train_step_reference(
        copy.deepcopy(start), windows, "full", torch.optim.SGD, sizes_fn=lambda batches: [lm_tokens(b) for b in batches]
    )
    assert_close(got, via, **TOL)
    # the replay weighted by 1/k instead of the token counts would be another update
    equal = train_step_reference(copy.deepcopy(start), windows, "full", torch.optim.SGD)
    assert max_differences(got, equal)[0] > 1e-4


@pytest.mark.parametrize("replay", ["micro", "last", "last_only"])
def test_causal_lm_other_modes_equal_train_step(tmp_path, replay):
    model = tiny_gpt2()
    start = copy.deepcopy(model)
    # SGD: the Trainer weighs a token-level loss as Σ_tokens/N, train_step as (Σ_tokens/n_i)·(n_i/N), equal up to
    # rounding, and AdamW would blow that rounding up on the attention's key bias, whose gradient is 0 in exact
    # arithmetic (softmax ignores a shift shared by all keys)
    trainer = run_sam_trainer(tmp_path, model, lm_dataset(), optimizer_cls=torch.optim.SGD, replay=replay)
    sizes = (lambda batches: [lm_tokens(b) for b in batches]) if replay != "last_only" else None
    windows = windows_of(trainer.seen)
    expected = train_step_reference(copy.deepcopy(start), windows, replay, torch.optim.SGD, sizes_fn=sizes)
    d = max_differences(params(model), expected)
    print(f"causal LM {replay} vs train_step: max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(params(model), expected, **TOL)


# ----------------------------------------------------------------------------------------------------------------------
# GradScaler (fp16's loss scaling)
#
# accelerate refuses fp16 on the CPU ("fp16 mixed precision requires a device in ..."), so these tests put a CPU
# torch.amp.GradScaler into the Trainer's accelerator before train(): accelerator.backward scales with it and the
# AcceleratedOptimizer steps through it (scaler.step skips on inf/NaN, scaler.update backs the scale off), exactly the
# calls of fp16 on a GPU. The forward stays fp32 and accelerate's own unscale before clipping is tied to its fp16
# state, so these run without clipping (max_grad_norm=0).


def scaled_trainer(tmp_path, model, init_scale, max_steps):
    trainer = RecordingSAMTrainer(
        model=model,
        args=arguments(tmp_path, max_grad_norm=0.0, max_steps=max_steps),
        train_dataset=qa_dataset(),
        optimizers=(torch.optim.AdamW(model.parameters(), lr=LR), None),
        rho=RHO,
    )
    trainer.seen = []
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return trainer


def test_grad_scaler_overflow_in_first_window_skips_the_step(tmp_path):
    model = tiny_bert_qa()
    with torch.no_grad():
        model.qa_outputs.weight.mul_(50.0)  # saturated logits: gradients far above 2 somewhere
    start = params(model)
    # the scale at which the first window's gradient overflows fp32 (max 3.4e38)
    window = qa_dataset()[: K * MICRO]
    loss = sum(
        model(**{k: torch.stack([r[k] for r in window[i : i + MICRO]]) for k in window[0]}).loss / K
        for i in range(0, K * MICRO, MICRO)
    )
    biggest = max(float(g.abs().max()) for g in torch.autograd.grad(loss, list(model.parameters())))
    init_scale = 2.0 ** int(torch.tensor(3.5e38 / biggest).log2().ceil())
    assert init_scale < 2.0**127, biggest
    trainer = scaled_trainer(tmp_path, model, init_scale, max_steps=1)
    trainer.train()
    assert trainer.accelerator.optimizer_step_was_skipped
    assert trainer.accelerator.scaler.get_scale() == init_scale * 0.5
    for p, w in zip(model.parameters(), start):
        assert torch.equal(p, w)  # not perturbed-and-left, not stepped


def test_grad_scaler_without_overflow_gives_the_unscaled_update(tmp_path):
    model = tiny_bert_qa(0.1)
    start = copy.deepcopy(model)
    trainer = scaled_trainer(tmp_path, model, 2.0**10, max_steps=UPDATES)
    trainer.train()
    assert not trainer.accelerator.optimizer_step_was_skipped
    plain = RecordingSAMTrainer(
        model=start,
        args=arguments(tmp_path, max_grad_norm=0.0),
        train_dataset=qa_dataset(),
        optimizers=(torch.optim.AdamW(start.parameters(), lr=LR), None),
        rho=RHO,
    )
    plain.seen = []
    plain.train()
    d = max_differences(params(model), params(start))
    print(f"GradScaler 2^10 vs unscaled: max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(params(model), params(start), **TOL)


# ----------------------------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    "setup, message",
    [
        ("deepspeed", "does not support DeepSpeed"),
        ("fsdp", "does not support FSDP"),
        ("context_parallel", "does not support context/sequence/tensor parallelism"),
    ],
)
def test_unsupported_setups_are_refused_in_one_line_before_training(tmp_path, setup, message):
    if setup == "fsdp":
        args = arguments(tmp_path, fsdp=True)
    else:
        args = arguments(tmp_path)
        if setup == "deepspeed":
            # TrainingArguments(deepspeed=...) needs the deepspeed package, which is not installed here: set the
            # field SAMTrainer reads on arguments that were built without it
            args.deepspeed = {"train_micro_batch_size_per_gpu": "auto"}
        else:
            from accelerate.parallelism_config import ParallelismConfig

            args.parallelism_config = ParallelismConfig(cp_size=2)
    model = tiny_bert_qa()
    with pytest.raises(ValueError, match=message) as raised:
        SAMTrainer(model=model, args=args, train_dataset=qa_dataset(), rho=RHO)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_arguments_are_refused(tmp_path):
    model, data = tiny_bert_qa(), qa_dataset()
    with pytest.raises(ValueError, match="use transformers.Trainer itself"):
        SAMTrainer(model=model, args=arguments(tmp_path), train_dataset=data, replay="none")
    with pytest.raises(ValueError, match="choose one of"):
        SAMTrainer(model=model, args=arguments(tmp_path), train_dataset=data, replay="window")
    with pytest.raises(ValueError, match="per_rank"):
        SAMTrainer(model=model, args=arguments(tmp_path), train_dataset=data, replay="last", perturbation="per_rank")
    with pytest.raises(ValueError, match="rho and eta"):
        SAMTrainer(model=model, args=arguments(tmp_path), train_dataset=data, rho=-1.0)
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=LR)
    with pytest.raises(TypeError, match="not sam.SAM"):
        SAMTrainer(model=model, args=arguments(tmp_path), train_dataset=data, optimizers=(sam, None))


# ----------------------------------------------------------------------------------------------------------------------
# 2 gloo ranks under torchrun (SGD: AdamW amplifies DDP's reduction-order rounding)


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """Two torchrun spawns of tests/sam_hf_ddp_worker.py (2 gloo ranks): the README's DDP example; then its accelerate
    example and SAMTrainer with perturbation global and per_rank. Returns the folder of what the ranks saved."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for part in ("ddp-example", "accelerate-and-trainer"):
        proc = subprocess.run(
            [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
            + [str(REPO / "tests" / "sam_hf_ddp_worker.py"), str(out), part],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        first_rank = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank0]"))
        assert proc.returncode == 0, (first_rank or proc.stderr)[-4000:]
    return out


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_global_window_and_all_reduce_twice(distributed):
    out = distributed
    for perturbation, all_reduces in (("global", (1, 1)), ("per_rank", (0, 1))):
        ranks = [torch.load(out / f"{perturbation}-rank{r}.pt") for r in range(2)]
        for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
            assert torch.equal(p, q)  # the replicas stay identical
        # all-reduces per window: (during the first pass, during the replay), from the comm hook's count
        assert ranks[0]["all_reduces"] == [list(all_reduces)] * UPDATES, ranks[0]["all_reduces"]
    # global: one process on the global window (rank 0's micro-batch i + rank 1's micro-batch i), same SGD steps
    ranks = [torch.load(out / f"global-rank{r}.pt") for r in range(2)]
    windows = []
    for w in range(UPDATES):
        batches = []
        for i in range(K):
            parts = [ranks[r]["seen"][w * K + i] for r in range(2)]
            batches.append({key: torch.cat([part[key] for part in parts]) for key in parts[0]})
        windows.append((batches, torch.get_rng_state()))
    expected = train_step_reference(tiny_bert_qa(), windows, "full", optimizer_cls=torch.optim.SGD)
    d = max_differences(ranks[0]["params"], expected)
    print(f"2 gloo ranks (global) vs one process on the global window: max abs {d[0]:.3g}, rel {d[1]:.3g}")
    assert_close(ranks[0]["params"], expected, **TOL)
    assert max_differences(expected, params(tiny_bert_qa()))[0] > 1e-3
    # per_rank: each rank's own e, another update (checked above: one all-reduce per window)
    other = max_differences(torch.load(out / "per_rank-rank0.pt")["params"], expected)
    print(f"2 gloo ranks per_rank vs global: max abs {other[0]:.3g}")
    assert other[0] > 1e3 * max(d[0], 1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# sam/README.md "Where you train": its code blocks are the files of tests/examples/, run here

EXAMPLES = REPO / "tests" / "examples"
README = REPO / "sam" / "README.md"


def readme_examples() -> dict[str, str]:
    """{file name: code} for every `<!-- example: tests/examples/NAME.py -->` marker followed by a python block."""
    found, lines = {}, README.read_text().splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.startswith("<!-- example: tests/examples/"):
            name = line.split("tests/examples/")[1].split()[0]
            assert lines[n + 1].strip() == "```python", f"sam/README.md: no python block after the marker of {name}"
            end = next(m for m in range(n + 2, len(lines)) if lines[m].strip() == "```")
            found[name] = "".join(lines[n + 2 : end])
    return found


def test_readme_blocks_are_the_example_files_verbatim():
    blocks = readme_examples()
    assert sorted(blocks) == sorted(p.name for p in EXAMPLES.glob("*.py"))
    for name, code in blocks.items():
        assert code == (EXAMPLES / name).read_text(), f"sam/README.md's block for {name} differs from the file"


def run_example(name, *argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    return runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_plain_loop_and_accelerate_examples_make_the_same_updates(monkeypatch):
    plain = run_example("plain_loop.py", monkeypatch=monkeypatch)
    accelerated = run_example("accelerate_loop.py", monkeypatch=monkeypatch)
    assert accelerated["ddp"] is None  # one process: no DDP module
    got, expected = params(accelerated["model"]), params(plain["model"])
    d = max_differences(got, expected)
    print(f"accelerate example vs plain-loop example: max abs {d[0]:.3g}")
    assert_close(got, expected, atol=0, rtol=0)
    torch.manual_seed(0)
    untrained = params(BertForQuestionAnswering(plain["config"]))
    assert max_differences(expected, untrained)[0] > 1e-4  # 4 updates happened


def test_sam_trainer_example_trains_four_full_sam_updates(tmp_path, monkeypatch):
    namespace = run_example("sam_trainer.py", str(tmp_path / "out"), monkeypatch=monkeypatch)
    trainer = namespace["trainer"]
    assert isinstance(trainer, SAMTrainer) and trainer.replay == "full"
    assert trainer.state.global_step == 32 // (2 * 4)
    assert trainer.state.log_history[-1]["train_loss"] > 0


@pytest.mark.slow
def test_distributed_examples_keep_the_ranks_identical(distributed):
    for name in ("ddp", "accelerate_loop"):
        ranks = [torch.load(distributed / f"example-{name}-rank{r}.pt") for r in range(2)]
        for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
            assert torch.equal(p, q), name
        assert ranks[0]["loss"] == ranks[1]["loss"]  # the loss over the global window, the same on every rank
        if name == "accelerate_loop":
            assert ranks[0]["accelerate"] == (2, True)  # accelerate joined both processes and wrapped DDP
        torch.manual_seed(0)  # the examples' untrained model
        config = BertConfig(
            vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
        )
        untrained = params(BertForQuestionAnswering(config))
        assert max_differences(ranks[0]["params"], untrained)[0] > 1e-4, name  # the windows did update
