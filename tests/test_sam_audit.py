"""sam.audit.which_replay: each loop of the wild is named by the rule its update follows, exactly, with dropout in the
model, and the model, the optimizers and the RNG are left bitwise as they were, also when the loop raises.

The loops are written here the way users write them (the blog's loop and the Trainer pattern live in sam/audit.py,
where `python -m sam.audit --example` runs them); the rules they are held to are sam.train_step's (its docstring).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import pytest
import torch
from torch import nn

from sam import SAM, train_step
from sam.audit import TOLERANCE, blog_loop, dropout_off, trainer_pattern, which_replay
from tests.conftest import PYTHON, REPO

K = 4
RHO = 0.05


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and on a shared 2-core machine a second thread waits on a busy
    core (a tiny-BERT audit took 0.5 s on one thread, minutes on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------------------
# models: a small MLP and a tiny random BERT-QA, both with dropout 0.1, float32


def make_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 2)).train()


def mlp_window(k=K, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 6, generator=g), torch.randn(5, 2, generator=g)) for _ in range(k)]


def mlp_loss(model):
    return lambda batch: nn.functional.mse_loss(model(batch[0]), batch[1])


def make_bert(seed=0):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    return BertForQuestionAnswering(config).train()


def qa_window(k=3, seed=1, vocab=50):
    g = torch.Generator().manual_seed(seed)
    window = []
    for _ in range(k):
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, 9:] = 0  # padding, as in real QA batches
        window.append(
            {
                "input_ids": torch.randint(0, vocab, (2, 12), generator=g),
                "attention_mask": mask,
                "start_positions": torch.randint(0, 9, (2,), generator=g),
                "end_positions": torch.randint(0, 9, (2,), generator=g),
            }
        )
    return window


def qa_loss(model):
    return lambda batch: model(**batch).loss


# ----------------------------------------------------------------------------------------------------------------------
# the loops, as users write them; each takes (loss_of, optimizer, k, model) and returns step(window)


class Davda54StyleSAM(torch.optim.Optimizer):
    """The shape of davda54/sam's SAM, which the blog uses: e = rho·g/(‖g‖ + 1e-12), w saved in state["old_p"],
    restored by rebinding `p.data`, then the base optimizer's step."""

    def __init__(self, params, base_optimizer, rho=RHO, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        norm = torch.norm(
            torch.stack([p.grad.norm(2) for g in self.param_groups for p in g["params"] if p.grad is not None]), 2
        )
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["old_p"] = p.data.clone()
                    p.add_(p.grad * scale)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def the_blog_loop(loss_of, optimizer, k, model):
    model.train()  # the blog calls model.train() in its loop: the audit's dropout-off must survive it
    return blog_loop(loss_of, optimizer, k, model.parameters())


def the_trainer_pattern(loss_of, optimizer, k, model):
    return trainer_pattern(loss_of, optimizer, k)


def per_micro_batch_closure_loop(loss_of, optimizer, k, model):
    """m-SAM by hand: per micro-batch a closure at w and at w + e_i; the second-pass gradients summed aside."""

    def step(window):
        model.train()
        total = {}
        for batch in window:

            def closure(batch=batch):
                loss = loss_of(batch) / k
                loss.backward()
                return loss

            optimizer.zero_grad()
            closure()
            optimizer.first_step(zero_grad=True)
            closure()
            optimizer.restore()
            for p in model.parameters():
                if p.grad is not None:
                    total[p] = total[p] + p.grad if p in total else p.grad.clone()
        for p in model.parameters():
            p.grad = total.get(p)
        optimizer.base_optimizer.step()
        optimizer.zero_grad()

    return step


def full_replay_loop(loss_of, optimizer, k, model, loss_factor=1.0, max_norm=None):
    """The blog's corrected loop: keep every micro-batch, replay them all at w + e. `loss_factor` multiplies the
    loss (a hand-made loss scale), `max_norm` clips the gradient the base optimizer steps with."""

    def step(window):
        model.train()
        for batch in window:
            (loss_of(batch) * loss_factor / k).backward()
        optimizer.first_step(zero_grad=True)
        for batch in window:
            (loss_of(batch) * loss_factor / k).backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.second_step(zero_grad=True)

    return step


def plain_accumulation(loss_of, optimizer, k, model):
    def step(window):
        model.train()
        for batch in window:
            (loss_of(batch) / k).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def sam_of(model, rho=RHO):
    return SAM(model.parameters(), torch.optim.AdamW, rho=rho, lr=1e-3)


LOOPS = {
    # verdict: (loop, optimizer for it)
    "last": (the_blog_loop, lambda m: Davda54StyleSAM(m.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-3)),
    "last_only": (the_trainer_pattern, sam_of),
    "micro": (per_micro_batch_closure_loop, sam_of),
    "full": (full_replay_loop, sam_of),
    "none": (plain_accumulation, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)),
}

MODELS = {
    "mlp": (make_mlp, mlp_window, mlp_loss),
    "bert_qa": (make_bert, qa_window, qa_loss),
}


def warmed(kind, verdict):
    """A model, its optimizer after one real update of its own loop (so the optimizer has state to keep) and
    leftover gradients, the step to audit, a fresh window and the loss."""
    make, window_of, loss_of = MODELS[kind]
    model = make()
    loop, optimizer_of = LOOPS[verdict]
    optimizer = optimizer_of(model)
    k = len(window_of())
    step = loop(loss_of(model), optimizer, k, model)
    step(window_of(seed=7))
    loss_of(model)(window_of(seed=8)[0]).backward()  # a gradient left in .grad must survive too
    return model, optimizer, step, window_of(), loss_of(model)


def everything(model, optimizer):
    """Every number the audit must leave alone: weights, buffers, gradients, optimizer state and groups, RNG."""
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "storage": [p.data_ptr() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "training": [m.training for m in model.modules()],
        "dropout": [m.p for m in model.modules() if isinstance(m, nn.Dropout)],
        "rng": torch.get_rng_state(),
    }


def assert_bitwise_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if key == "optimizer":
            assert a["param_groups"] == b["param_groups"]
            assert a["state"].keys() == b["state"].keys()
            for i in a["state"]:
                assert a["state"][i].keys() == b["state"][i].keys()
                for name in a["state"][i]:
                    x, y = a["state"][i][name], b["state"][i][name]
                    assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, (i, name)
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
        else:
            assert len(a) == len(b), key
            for x, y in zip(a, b):
                assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key


# ----------------------------------------------------------------------------------------------------------------------
# each loop is named by its rule, exactly, on both models


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("verdict", list(LOOPS))
def test_each_loop_gets_its_rule_and_everything_stays_as_it_was(kind, verdict):
    model, optimizer, step, window, loss_fn = warmed(kind, verdict)
    before = everything(model, optimizer)
    report = which_replay(step, model, window, loss_fn, rho=RHO)
    assert_bitwise_same(before, everything(model, optimizer))
    assert report.verdict == verdict, str(report)
    assert report.matches == (verdict,)
    match = report.row(verdict)
    # exact up to float32 rounding, although the model has dropout 0.1 and the loop calls model.train()
    assert match.distance < 1e-5 and match.cosine > 1 - 1e-9
    assert not report.rng_advanced
    # and the rules are told apart on this window: every other rule is far off
    assert min(r.distance for r in report.rows if r.rule != verdict) > 100 * TOLERANCE
    # (loss / k).backward() in the loop, mean weights 1/k in the rule: the same length, except the Trainer pattern,
    # which divides micro-batch k's loss by k where last_only takes it whole
    expected_scale = 1 / len(window) if verdict == "last_only" else 1.0
    assert match.scale == pytest.approx(expected_scale, rel=1e-5)
    table = str(report)
    assert f"verdict: {verdict} —" in table and all(r.rule in table for r in report.rows)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(MODELS))
def test_a_different_rho_matches_no_rule_and_names_the_closest(kind):
    make, window_of, loss_of = MODELS[kind]
    model = make()
    optimizer = sam_of(model, rho=0.1)  # the loop's SAM uses rho = 0.1; the audit is told 0.05
    step = full_replay_loop(loss_of(model), optimizer, len(window_of()), model)
    report = which_replay(step, model, window_of(), loss_of(model), rho=RHO)
    assert report.verdict is None and report.matches == ()
    closest = min(report.rows, key=lambda r: r.distance)
    assert report.closest == closest.rule and closest.distance > 10 * TOLERANCE
    assert f"no known rule matches; closest: {closest.rule} at distance {closest.distance:.2e}" in str(report)
    # told the loop's own rho, the audit names it
    assert which_replay(step, model, window_of(), loss_of(model), rho=0.1).verdict == "full"


def test_a_scaled_and_clipped_loop_keeps_its_verdict_and_shows_the_scale():
    model = make_mlp()
    loss_fn = mlp_loss(model)
    scaled = which_replay(
        full_replay_loop(loss_fn, sam_of(model), K, model, loss_factor=8.0), model, mlp_window(), loss_fn
    )
    assert scaled.verdict == "full"
    assert scaled.row("full").scale == pytest.approx(8.0, rel=1e-5)
    assert "scale: step's gradient is 8 × the rule's" in str(scaled)
    # clipped to a norm below the gradient's: the same direction at length max_norm, i.e. scale = max_norm / ‖r‖
    max_norm = 1e-3
    clipped = which_replay(
        full_replay_loop(loss_fn, sam_of(model), K, model, max_norm=max_norm), model, mlp_window(), loss_fn
    )
    assert clipped.verdict == "full"
    reference = copy.deepcopy(model).eval()  # ‖r‖: train_step's own full update, dropout off (the MLP has no BN)
    r_norm = train_step(mlp_loss(reference), mlp_window(), sam_of(reference), replay="full").grad_norm
    assert clipped.row("full").scale == pytest.approx(max_norm / r_norm, rel=1e-4)
    assert f"scale: step's gradient is {max_norm / r_norm:.4g} × the rule's" in str(clipped)


@pytest.mark.slow
def test_asam_and_uneven_micro_batches_are_audited_with_the_loops_own_settings():
    """ASAM (weights by name, as SamsungLabs/ASAM) and micro-batches weighted n_i/N: matched when the audit is told
    so, not otherwise."""
    model = make_mlp()
    loss_fn = mlp_loss(model)
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if n.endswith("weight")], "is_weight": True},
        {"params": [p for n, p in named if not n.endswith("weight")], "is_weight": False},
    ]
    asam = SAM(groups, torch.optim.AdamW, rho=0.5, adaptive=True, eta=0.01, lr=1e-3)
    step = full_replay_loop(loss_fn, asam, K, model)
    assert which_replay(step, model, mlp_window(), loss_fn, rho=0.5, adaptive=True, asam_weights="name").verdict == (
        "full"
    )
    assert which_replay(step, model, mlp_window(), loss_fn, rho=0.5).verdict is None

    sizes = [2, 5, 3, 6]
    g = torch.Generator().manual_seed(3)
    window = [(torch.randn(n, 6, generator=g), torch.randn(n, 2, generator=g)) for n in sizes]
    optimizer = sam_of(model)

    def weighted(window):
        for batch in window:
            (loss_fn(batch) * len(batch[0]) / sum(sizes)).backward()
        optimizer.first_step(zero_grad=True)
        for batch in window:
            (loss_fn(batch) * len(batch[0]) / sum(sizes)).backward()
        optimizer.second_step(zero_grad=True)

    assert which_replay(weighted, model, window, loss_fn, sizes=sizes).verdict == "full"
    assert which_replay(weighted, model, window, loss_fn).verdict is None


def test_a_grad_scaler_loop_is_seen_unscaled():
    """fp16-style loss scaling with torch.amp.GradScaler on the CPU: the base optimizer steps with the unscaled
    gradient (scaler.step unscales first), so the scale ratio is 1."""
    model = make_mlp()
    loss_fn = mlp_loss(model)
    optimizer = sam_of(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def step(window):
        for batch in window:
            scaler.scale(loss_fn(batch) / K).backward()
        optimizer.first_step(zero_grad=True, grad_scale=scaler.get_scale())
        for batch in window:
            scaler.scale(loss_fn(batch) / K).backward()
        optimizer.restore()
        scaler.unscale_(optimizer.base_optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(optimizer.base_optimizer)
        scaler.update()
        optimizer.mark_stepped()

    report = which_replay(step, model, mlp_window(), loss_fn)
    assert report.verdict == "full" and report.row("full").scale == pytest.approx(1.0, rel=1e-5)


def test_a_sam_wrappers_own_step_calling_its_base_counts_once():
    """pytorch_optimizer.SAM.step(closure) fires the step hook twice, nested (SAM, then its base inside, with the
    gradient at w + e): that is one update, and the base's gradient is the one stepped with."""
    from pytorch_optimizer import SAM as TheirSAM

    model = make_mlp()
    loss_fn = mlp_loss(model)
    optimizer = TheirSAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-3)

    def step(window):
        def closure():
            optimizer.zero_grad()
            for batch in window:
                (loss_fn(batch) / len(window)).backward()

        closure()
        optimizer.step(closure)

    assert which_replay(step, model, mlp_window(), loss_fn).verdict == "full"
    # and the blog's loop with their SAM is the copied loop's bug
    blog = blog_loop(loss_fn, TheirSAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=1e-3), K, model.parameters())
    assert which_replay(blog, model, mlp_window(), loss_fn).verdict == "last"


def test_two_optimizers_on_two_parts_are_one_update():
    model = make_mlp()
    loss_fn = mlp_loss(model)
    body, head = list(model[0].parameters()), list(model[3].parameters())
    optimizers = [torch.optim.SGD(body, lr=0.1), torch.optim.AdamW(head, lr=1e-3)]

    def step(window):
        for batch in window:
            (loss_fn(batch) / len(window)).backward()
        for o in optimizers:
            o.step()
            o.zero_grad()

    report = which_replay(step, model, mlp_window(), loss_fn)
    assert report.verdict == "none" and report.stepped == "SGD + AdamW"


# ----------------------------------------------------------------------------------------------------------------------
# left as it was: after an exception, and for the rest of training


def test_an_exception_inside_step_leaves_everything_as_it_was():
    model, optimizer, _, window, loss_fn = warmed("mlp", "full")
    before = everything(model, optimizer)

    def step(window):
        for batch in window:
            (loss_fn(batch) / K).backward()
        optimizer.first_step(zero_grad=True)  # the weights now sit at w + e
        raise RuntimeError("CUDA out of memory (pretend)")

    with pytest.raises(RuntimeError, match="out of memory") as caught:
        which_replay(step, model, window, loss_fn)
    assert any("restored" in note for note in caught.value.__notes__)
    assert_bitwise_same(before, everything(model, optimizer))
    assert not optimizer.is_perturbed  # sam.SAM's own bookkeeping too: the next first_step works
    full_replay_loop(loss_fn, optimizer, K, model)(window)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # davda54-style SAM
@pytest.mark.parametrize("verdict", ["last", "full"])
def test_training_after_an_audit_is_bitwise_training_without_it(verdict):
    """The trajectory is untouched: two identical set-ups, one audited between its updates, end bitwise equal
    (this catches what a comparison of state_dicts would not: an optimizer's private bookkeeping, a scheduler)."""
    runs = []
    for audited in (False, True):
        model, optimizer, step, window, loss_fn = warmed("bert_qa", verdict)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0 / (u + 1))
        if audited:
            which_replay(step, model, window, loss_fn)
        for seed in (11, 12):
            step(qa_window(seed=seed))
            scheduler.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------------
# dropout


def test_dropout_off_covers_modules_and_hugging_face_float_rates_and_survives_train():
    """A tiny random Llama-QA keeps its attention dropout as a float it hands to the attention function (no
    nn.Dropout anywhere): with 0.1 in the config, the audit is still exact and draws no random number."""
    from transformers import LlamaConfig, LlamaForQuestionAnswering

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attention_dropout=0.1,
        attn_implementation="eager",
    )
    model = LlamaForQuestionAnswering(config).train()
    attention = model.transformer.layers[0].self_attn
    assert attention.attention_dropout == 0.1
    with dropout_off(model):
        model.train()
        assert attention.attention_dropout == 0.0
    assert attention.attention_dropout == 0.1
    window = [{k: v for k, v in b.items() if k != "attention_mask"} for b in qa_window()]
    loss_fn = qa_loss(model)
    report = which_replay(full_replay_loop(loss_fn, sam_of(model), len(window), model), model, window, loss_fn)
    assert report.verdict == "full" and not report.rng_advanced and report.row("full").distance < 1e-5
    assert attention.attention_dropout == 0.1


def test_a_dropout_the_audit_cannot_switch_off_is_reported():
    model = make_mlp()
    loss_fn = mlp_loss(model)

    def noisy(batch):  # a literal rate in the code: not an attribute the audit can find
        return nn.functional.mse_loss(nn.functional.dropout(model(batch[0]), 0.5, training=True), batch[1])

    report = which_replay(full_replay_loop(noisy, sam_of(model), K, model), model, mlp_window(), loss_fn)
    assert report.rng_advanced and "random number generator advanced" in str(report)


# ----------------------------------------------------------------------------------------------------------------------
# bad input: one clear line each


@pytest.mark.slow
def test_bad_input_is_reported_in_one_line():
    model = make_mlp()
    loss_fn = mlp_loss(model)
    optimizer = sam_of(model)
    window = mlp_window()

    def no_update(window):
        for batch in window:
            loss_fn(batch).backward()

    def update_per_micro_batch(window):
        plain = torch.optim.SGD(model.parameters(), lr=0.1)
        for batch in window:
            loss_fn(batch).backward()
            plain.step()
            plain.zero_grad()

    other = nn.Linear(6, 2)
    frozen = nn.Sequential(nn.Linear(2, 2).requires_grad_(False))
    cases = [
        (no_update, window, model, "never called an optimizer's step"),
        (update_per_micro_batch, window, model, "same parameters in 4 separate optimizer steps"),
        (full_replay_loop(loss_fn, optimizer, 1, model), window[:1], model, "with k = 1, full = last = micro"),
        (no_update, window, frozen, "no parameter that requires grad"),
        # step trains `model`, the audit is handed another one: that one is left as it was
        (full_replay_loop(loss_fn, optimizer, K, model), window, other, "holds none of the model's"),
    ]
    for step, w, audited, message in cases:
        its_optimizer = optimizer if audited is model else torch.optim.AdamW(audited.parameters())
        before = everything(audited, its_optimizer)
        with pytest.raises(ValueError, match=re.escape(message)) as caught:
            which_replay(step, audited, w, loss_fn)
        assert "\n" not in str(caught.value)
        assert_bitwise_same(before, everything(audited, its_optimizer))


def test_identical_micro_batches_cannot_tell_the_sam_rules_apart():
    model = make_mlp()
    loss_fn = mlp_loss(model)
    window = mlp_window()[:1] * K  # k copies of one micro-batch: full = last = micro = last_only
    report = which_replay(full_replay_loop(loss_fn, sam_of(model), K, model), model, window, loss_fn)
    assert report.verdict is None and set(report.matches) == {"full", "last", "micro", "last_only"}
    assert "they are the same update" in str(report)


# ----------------------------------------------------------------------------------------------------------------------
# the example command, the make target and the README's example


@pytest.mark.slow
def test_example_command_prints_the_blog_loops_verdict():
    done = subprocess.run(
        [PYTHON, "-m", "sam.audit", "--example"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "verdict: last — perturbation from the whole window" in done.stdout
    assert done.stderr == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_audit_example_runs_the_example():
    done = subprocess.run(["make", "-n", "audit-example"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "-m sam.audit --example" in done.stdout


def test_the_readme_example_runs_as_written():
    text = (REPO / "sam" / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- audit-example -->")[1].split("<!-- /audit-example -->")[0]
    code = block.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "sam/README.md (Check your own loop)", "exec"), namespace)
    assert namespace["report"].verdict == "full"


@pytest.mark.slow
@pytest.mark.parametrize("replay", ["full", "last_only"])
def test_sam_trainer_driven_over_the_window_is_named_by_its_replay(tmp_path, replay):
    """sam.hf.SAMTrainer as a user runs it (`trainer.train()` for one update of gradient_accumulation_steps = k, the
    window as its dataset, in order): the audit names the rule it was asked for; the Trainer's clipping and its 1/k
    loss scaling change only the scale. A fresh Trainer each time, so the audit may run `step` more than once."""
    from transformers import TrainingArguments

    from sam.hf import SAMTrainer

    model = make_bert()
    window = qa_window(k=3)
    examples = [{key: value[row] for key, value in batch.items()} for batch in window for row in range(2)]

    def step(window):
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=len(window),
            max_steps=1,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            train_sampling_strategy="sequential",
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        SAMTrainer(model=model, args=args, train_dataset=examples, rho=RHO, replay=replay).train()

    before = [p.detach().clone() for p in model.parameters()]
    report = which_replay(step, model, window, qa_loss(model), rho=RHO)
    assert report.verdict == replay, str(report)
    assert report.row(replay).distance < 1e-5
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_asam_by_default_uses_the_rule_of_sam_sam_also_with_layer_norm():
    """A LayerNorm scale is a 1-D tensor named "weight": sam.SAM(model.parameters(), adaptive=True) gives it T = 1
    (ndim rule), the authors' name rule T = |w| + eta. The audit's default is sam.SAM's rule, so a correct ASAM loop
    built the plain way is named full; told the name rule, the same loop matches nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2)).train()
    with torch.no_grad():
        model[1].weight.mul_(3.0)  # scales far from 1, so the two rules give different e
    loss_fn = mlp_loss(model)
    asam = SAM(model.parameters(), torch.optim.AdamW, rho=0.5, adaptive=True, eta=0.01, lr=1e-3)
    step = full_replay_loop(loss_fn, asam, K, model)
    assert which_replay(step, model, mlp_window(), loss_fn, rho=0.5, adaptive=True).verdict == "full"
    by_name = which_replay(step, model, mlp_window(), loss_fn, rho=0.5, adaptive=True, asam_weights="name")
    assert by_name.verdict is None and by_name.closest == "full"
    with pytest.raises(ValueError, match="asam_weights="):
        which_replay(step, model, mlp_window(), loss_fn, rho=0.5, adaptive=True, asam_weights="size")
