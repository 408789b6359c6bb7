"""One rank of tests/test_sam_hf.py's data-parallel test (started by torchrun, 2 gloo processes on the CPU).

Trains the tiny BERT-QA with SAMTrainer, SGD, per_device_train_batch_size=2, gradient_accumulation_steps=4, 3 updates,
once with perturbation="global" and once with "per_rank"; saves per rank the final weights, the micro-batches this rank
was handed, and the gradient all-reduces per window counted by a DDP communication hook
(experiments.distributed.count_allreduces: one call per bucket, and the tiny model fits one bucket), split into those
that happened by the end of the first pass and those of the replay. Before that, runs sam/README.md's DDP and
accelerate examples (tests/examples/); argv: <out> ddp-example | accelerate-and-trainer.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from experiments.distributed import count_allreduces
from sam.hf import SAMTrainer
from tests.test_sam_hf import RHO, SGD_LR, Recording, arguments, qa_dataset, tiny_bert_qa


class CountingSAMTrainer(Recording, SAMTrainer):
    """Registers the counting hook on the DDP module before its first backward, and notes the count when the last
    micro-batch's first pass is done (compute_loss of the first replay starts) and at each optimizer step."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.calls is None:
            self.calls = count_allreduces(model)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, **kwargs):
        self.losses_computed += 1
        if self.losses_computed % 8 == 5:  # the 5th of the window's 8 passes: the replay begins
            self.first_pass_done = len(self.calls)
        return super().compute_loss(model, inputs, **kwargs)


class Counts(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.windows, self.before = trainer, [], 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        t = self.trainer
        total = len(t.calls)
        self.windows.append([t.first_pass_done - self.before, total - t.first_pass_done])
        self.before = total


def run_examples(out: Path, names) -> None:
    """sam/README.md's DDP and accelerate examples as a user runs them under torchrun (accelerate reads torchrun's
    environment as `accelerate launch` would set it); saves each rank's final weights."""
    for name in names:
        if name == "accelerate_loop":
            # what `accelerate launch --cpu` sets: on a CPU, accelerate joins torchrun's processes only with it
            os.environ["ACCELERATE_USE_CPU"] = "true"
        namespace = runpy.run_path(str(Path(__file__).parent / "examples" / f"{name}.py"), run_name="__main__")
        rank = int(os.environ["RANK"])
        weights = [p.detach().clone() for p in namespace["model"].parameters()]
        # accelerate: the number of processes it joined, and whether train_step got its DDP module
        accelerator = namespace.get("accelerator")
        joined = (accelerator.num_processes, namespace["ddp"] is not None) if accelerator is not None else None
        saved = {"params": weights, "loss": namespace["result"].loss, "accelerate": joined}
        torch.save(saved, out / f"example-{name}-rank{rank}.pt")


def main(out: Path, part: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if part == "ddp-example":
        # alone in its spawn: ddp.py starts and ends its own process group, and a second group started in the same
        # processes on torchrun's store can meet the first one's stale rendezvous keys (seen here: a hang, a reset)
        run_examples(out, ["ddp"])
        return
    run_examples(out, ["accelerate_loop"])  # accelerate starts the process group the Trainer then reuses
    for perturbation in ("global", "per_rank"):
        model = tiny_bert_qa()
        trainer = CountingSAMTrainer(
            model=model,
            args=arguments(out / perturbation, ddp_backend="gloo", ddp_timeout=120),
            train_dataset=qa_dataset(n=2 * 3 * 4 * 2),
            optimizers=(torch.optim.SGD(model.parameters(), lr=SGD_LR), None),
            rho=RHO,
            perturbation=perturbation,
        )
        trainer.seen, trainer.calls, trainer.losses_computed, trainer.first_pass_done = [], None, 0, None
        counts = Counts(trainer)
        trainer.add_callback(counts)
        trainer.train()
        rank = trainer.args.process_index
        torch.save(
            {
                "params": [p.detach().clone() for p in model.parameters()],
                "seen": [batch for batch, _ in trainer.seen],
                "all_reduces": counts.windows,
            },
            out / f"{perturbation}-rank{rank}.pt",
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
