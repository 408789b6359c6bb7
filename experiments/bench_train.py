"""The product's training loop against what a user would run instead, side by side in one process.

    python -m experiments.bench_train                       # `make bench-train`: all four CPU cases
    python -m experiments.bench_train --cases default --updates 6
    python -m experiments.bench_train --device cuda --precision bf16 --model bert-base-random   # on a GPU

Cases (each a config of this repo; the peer gets the same model weights, features, micro-batch, accumulation,
precision, learning rate, warmup and clipping):

    default        configs/default.yaml + the AdamW arm: MiniLM, seq 128 / stride 32, micro-batch 8, k = 4
    squad384       the same at seq 384 / stride 128 on SQuAD-like lengths (see `squad_like_records`)
    sam_default    configs/default.yaml + sam_full, against a plain loop around pytorch_optimizer.SAM
    sam_squad384   sam_full at seq 384 on SQuAD-like lengths, against the same plain loop

Peers
- AdamW cases: `transformers.Trainer` as HF's run_qa example sets it up by default: features padded to
  max_seq_length (run_qa's `pad_to_max_length=True`), `default_data_collator`, the model's own QA loss, and the
  Trainer's default optimizer (`adamw_torch_fused` with torch >= 2.8), linear schedule.
- SAM cases: the loop a user writes around `pytorch_optimizer.SAM(params, torch.optim.AdamW, rho=...)`: the same
  pre-padded batches from a DataLoader, k first-pass backward passes of loss/k, `first_step`, k second-pass
  backward passes, clipping, `second_step`, the lr schedule.
- The product: `experiments.trainer.Trainer.window_batches` + `Trainer.step` (dynamic padding, the masked loss,
  `sam.train_step`, fused AdamW where torch has it), exactly what a training run executes per update.

Timing: the two alternate update by update. For the HF cases the product's update runs inside a Trainer callback
after each HF update (`on_step_end`), and each side's time is measured from the end of the other's update to the end
of its own, so HF's data loading, collation and bookkeeping count as HF's. The first `--warmup` updates of each side
are dropped; examples/s = features per update / median seconds per update (features, as HF's
`train_samples_per_second` counts them). On CUDA every timestamp is taken after `torch.cuda.synchronize()`.
The table's `pad %` is the set's padding at max_seq_length (what the peer computes in vain), `tok %` the tokens the
product computes over the timed windows as a share of the peer's (`computed_token_share`): dynamic padding cannot
make the product faster than about 1/tok % on the forward/backward.

On CUDA the report adds model FLOPs utilisation for the AdamW cases (Chowdhery et al. 2022, PaLM, App. B):

    FLOPs per update = Σ_features (6 · N · t + 12 · L · d · t²)

with N the non-embedding parameters, t the feature's real tokens, L layers and d the hidden size, counted for real
tokens only (padding is not useful work), over the GPU's dense bf16 peak (`--peak-tflops`, or the table below).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .allocator import keep_large_blocks_on_heap
from .batches import epoch_windows
from .config import load_config
from .data.generated import generate_records, generator_settings
from .model import load_tokenizer
from .optim_setup import linear_schedule
from .provenance import REPO_ROOT, env_info
from .rundir import atomic_write_json
from .schema import GeneratedDataConfig
from .trainer import Trainer

CASES = {  # name: (config files, overrides, peer)
    "default": (["configs/default.yaml", "configs/arm/adamw.yaml"], [], "hf_trainer"),
    "squad384": (["configs/default.yaml", "configs/arm/adamw.yaml"], ["squad_like"], "hf_trainer"),
    "sam_default": (["configs/default.yaml", "configs/arm/sam_full.yaml"], [], "sam_loop"),
    "sam_squad384": (["configs/default.yaml", "configs/arm/sam_full.yaml"], ["squad_like"], "sam_loop"),
}
TARGETS = {"default": 1.05, "squad384": 1.5}  # product ÷ HF Trainer examples/s on CPU
# dense bf16 peak FLOP/s of common GPUs (vendor datasheets, SXM parts, without sparsity)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}

# SQuAD-like lengths. Two facts about SQuAD v1.1 with a BERT uncased tokenizer at seq 384 / stride 128: 57 % of the
# feature tokens are padding (so a mean of about 165 real tokens per feature, question included), and about 1 % of
# the examples overflow into a second window (HF's run_qa: 88,5xx features from 87,599 examples). A log-normal
# context length with median 137 word pieces and σ = 0.42 matches both (mean 150, P(> 366) ≈ 1 %).
SQUAD_CONTEXT_MEDIAN, SQUAD_CONTEXT_SIGMA = 137.0, 0.42


# ------------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench_train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--updates", type=int, default=8, help="measured updates per side and case")
    p.add_argument("--warmup", type=int, default=2, help="updates per side dropped before measuring")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--model",
        default="embedded",
        help="model.name_or_path, or bert-base-random (a bert-base-size BERT with random weights)",
    )
    p.add_argument("--micro-batch", type=int, default=None, help="train.micro_batch_size (default: the config's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    p.add_argument("--squad-examples", type=int, default=480, help="examples of the SQuAD-like set")
    p.add_argument("--out", default="results/bench/train.json")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------------------
# the SQuAD-like data


def squad_like_records(n: int, tokenizer, seed: int = 0) -> list[dict]:
    """`n` generated QA records whose contexts are stretched to SQuAD-like token lengths.

    Each record keeps its own paragraph (so its answer and offsets stay valid) and is followed by sentences of
    other generated paragraphs until its context reaches a length drawn from LogNormal(ln 137, 0.42) word pieces
    (clipped to [24, 700]); the lengths are made-up text of real lengths, not real text.
    """
    settings = generator_settings(GeneratedDataConfig(n_train=n, n_dev=1, long_context_frac=0.0, seed=4321))
    records = generate_records(settings).train
    sentences = sorted({s.strip() + "." for r in records for s in r["context"].split(". ") if s.strip()})
    sentence_tokens = [len(t) for t in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
    rng = random.Random(seed)
    out = []
    for record in records:
        target = min(700, max(24, int(rng.lognormvariate(math.log(SQUAD_CONTEXT_MEDIAN), SQUAD_CONTEXT_SIGMA))))
        context = record["context"]
        length = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        while length < target:
            i = rng.randrange(len(sentences))
            context += " " + sentences[i]
            length += sentence_tokens[i]
        out.append({**record, "context": context})
    return out


def write_squad_like(folder: Path, n: int, tokenizer) -> tuple[Path, Path]:
    records = squad_like_records(n, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    train, dev = folder / "squad_like_train.jsonl", folder / "squad_like_dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    dev.write_text("".join(json.dumps(r) + "\n" for r in records[:8]))
    return train, dev


# ------------------------------------------------------------------------------------------------------------------
# building one case


def case_config(name: str, args: argparse.Namespace, workdir: Path, tokenizer):
    files, extra, _ = CASES[name]
    overrides = [
        f"results_dir={workdir}",
        "tracking.mode=disabled",
        f"train.device={args.device}",
        f"train.precision={args.precision}",
        f"train.max_updates={args.warmup + args.updates}",
    ]
    if args.micro_batch:
        overrides.append(f"train.micro_batch_size={args.micro_batch}")
    if args.model != "bert-base-random":
        overrides.append(f"model.name_or_path={args.model}")
    if "squad_like" in extra:
        train, dev = write_squad_like(workdir, args.squad_examples, tokenizer)
        overrides += [
            "data.source=files",
            f"data.train_file={train}",
            f"data.validation_file={dev}",
            "data.max_seq_length=384",
            "data.doc_stride=128",
        ]
    return load_config([REPO_ROOT / f for f in files], overrides)


def bert_base_random(tokenizer) -> torch.nn.Module:
    """A bert-base-size BertForQuestionAnswering (12 layers, 768 wide, 110 M parameters) with random weights."""
    from transformers import BertConfig, BertForQuestionAnswering

    return BertForQuestionAnswering(BertConfig(vocab_size=len(tokenizer)))


def build_trainer(cfg, workdir: Path, args: argparse.Namespace):
    trainer = Trainer(cfg, workdir / "run")
    if args.model == "bert-base-random":
        torch.manual_seed(cfg.seed)
        trainer.set_model(bert_base_random(trainer.tokenizer))  # forward modules, optimizer and schedule follow it
    trainer.model.train()
    return trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_windows(trainer) -> list[list[torch.Tensor]]:
    """The windows both sides train on, in order: epoch 0 of the run's seed (experiments.batches.epoch_windows)."""
    t = trainer.cfg.train
    return epoch_windows(len(trainer.train), t.micro_batch_size, t.accumulation_steps, trainer.cfg.seed, 0)


def computed_token_share(features, windows) -> float:
    """The tokens the product computes over `windows` (each micro-batch as wide as its longest feature, rounded up
    to a multiple of 8) as a share of the peer's (every micro-batch at max_seq_length): Σ width·b / Σ max_len·b.
    1 − share bounds what dynamic padding can save; on attention-free parts the speed-up is about 1/share."""
    computed = sum(features.width(ix) * len(ix) for window in windows for ix in window)
    padded = sum(features.max_seq_length * len(ix) for window in windows for ix in window)
    return computed / padded


def product_updates(trainer) -> Callable[[], float]:
    """A function that runs the product's next update and returns its wall seconds."""
    windows = iter(bench_windows(trainer))

    def one() -> float:
        sync(trainer.device)
        start = time.perf_counter()
        batches, sizes = trainer.window_batches(next(windows))
        trainer.step(batches, sizes)
        sync(trainer.device)
        return time.perf_counter() - start

    return one


# ------------------------------------------------------------------------------------------------------------------
# the peers


def run_against_hf_trainer(trainer, model, workdir: Path, n_updates: int) -> tuple[list[float], list[float], dict]:
    """HF Trainer and the product alternating update by update; returns (HF seconds, product seconds, HF facts)."""
    from transformers import Trainer as HFTrainer
    from transformers import TrainerCallback, TrainingArguments, default_data_collator

    cfg, t, o = trainer.cfg, trainer.cfg.train, trainer.cfg.optim
    product = product_updates(trainer)
    hf_times, product_times = [], []

    class Alternate(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            sync(trainer.device)
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(trainer.device)
            hf_times.append(time.perf_counter() - self.mark)
            product_times.append(product())
            self.mark = time.perf_counter()

    hf_args = TrainingArguments(
        output_dir=str(workdir / "hf"),
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.accumulation_steps,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.betas[0],
        adam_beta2=o.betas[1],
        adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm or 0.0,
        lr_scheduler_type="linear",
        warmup_steps=o.warmup_ratio,
        max_steps=n_updates,
        seed=cfg.seed,
        bf16=t.precision == "bf16",
        use_cpu=trainer.device.type == "cpu",
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
    )
    hf = HFTrainer(
        model=model,
        args=hf_args,
        train_dataset=trainer.train.dataset,
        data_collator=default_data_collator,
        callbacks=[Alternate()],
    )
    hf.train()
    facts = {
        "optimizer": type(hf.optimizer.optimizer if hasattr(hf.optimizer, "optimizer") else hf.optimizer).__name__,
        "optim": str(hf_args.optim),
        "fused": bool(hf.optimizer.param_groups[0].get("fused")),
    }
    return hf_times, product_times, facts


def run_against_sam_loop(trainer, model, n_updates: int) -> tuple[list[float], list[float], dict]:
    """A plain loop around pytorch_optimizer.SAM and the product alternating update by update."""
    # the peers' libraries are imported where they are used: pytorch_optimizer is needed by this comparison only,
    # and transformers takes seconds to import
    from pytorch_optimizer import SAM as ReferenceSAM
    from transformers import default_data_collator

    cfg, t, o = trainer.cfg, trainer.cfg.train, trainer.cfg.optim
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "LayerNorm" not in n)]
    optimizer = ReferenceSAM(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        torch.optim.AdamW,
        rho=o.rho,
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
    )
    scheduler = linear_schedule(optimizer.base_optimizer, n_updates, o.warmup_ratio)
    loader = DataLoader(
        trainer.train.dataset,
        batch_size=t.micro_batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=default_data_collator,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    micro = iter(loader)
    product = product_updates(trainer)
    dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32
    device = trainer.device
    model.train()

    def loss_of(batch: dict) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=t.precision == "bf16"):
            return model(**batch).loss / t.accumulation_steps

    def reference_update() -> float:
        sync(device)
        start = time.perf_counter()
        window = [
            {k: v.to(device, non_blocking=True) for k, v in next(micro).items()} for _ in range(t.accumulation_steps)
        ]
        for batch in window:
            loss_of(batch).backward()
        optimizer.first_step(zero_grad=True)
        for batch in window:
            loss_of(batch).backward()
        if o.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
        optimizer.second_step(zero_grad=True)
        scheduler.step()
        sync(device)
        return time.perf_counter() - start

    peer_times, product_times = [], []
    for _ in range(n_updates):
        peer_times.append(reference_update())
        product_times.append(product())
    return peer_times, product_times, {"optimizer": "pytorch_optimizer.SAM(torch.optim.AdamW)"}


# ------------------------------------------------------------------------------------------------------------------
# FLOPs


def model_flops_per_update(model: torch.nn.Module, lengths: list[int]) -> float:
    """Σ over the features of one update of 6·N·t + 12·L·d·t² (PaLM App. B; forward + backward, real tokens)."""
    config = model.config
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    n_params = sum(p.numel() for p in model.parameters()) - embedding
    layers, width = config.num_hidden_layers, config.hidden_size
    return float(sum(6 * n_params * t + 12 * layers * width * t * t for t in lengths))


def gpu_peak_flops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


# ------------------------------------------------------------------------------------------------------------------
# one case, the report


def run_case(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    tokenizer = load_tokenizer("embedded" if args.model == "bert-base-random" else args.model)
    cfg = case_config(name, args, workdir, tokenizer)
    trainer = build_trainer(cfg, workdir, args)
    peer_model = copy.deepcopy(trainer.model)  # the same initial weights on both sides
    n = args.warmup + args.updates
    features_per_update = cfg.train.micro_batch_size * cfg.train.accumulation_steps
    if n * features_per_update > len(trainer.train):
        raise SystemExit(
            f"{name}: {n} updates need {n * features_per_update} features, the set has "
            f"{len(trainer.train)}; lower --updates or raise --squad-examples"
        )
    peer = CASES[name][2]
    print(
        f"[{name}] {len(trainer.train)} features at seq {cfg.data.max_seq_length}, micro-batch "
        f"{cfg.train.micro_batch_size} x k {cfg.train.accumulation_steps}; {n} updates per side "
        f"({args.warmup} warm-up) against {peer}",
        file=sys.stderr,
        flush=True,
    )
    if peer == "hf_trainer":
        peer_times, product_times, facts = run_against_hf_trainer(trainer, peer_model, workdir, n)
    else:
        peer_times, product_times, facts = run_against_sam_loop(trainer, peer_model, n)
    peer_s = statistics.median(peer_times[args.warmup :])
    product_s = statistics.median(product_times[args.warmup :])
    lengths = trainer.train.lengths
    width = trainer.train.max_seq_length
    out = {
        "config": {
            "files": CASES[name][0],
            "max_seq_length": width,
            "doc_stride": cfg.data.doc_stride,
            "micro_batch_size": cfg.train.micro_batch_size,
            "k": cfg.train.accumulation_steps,
            "precision": cfg.train.precision,
            "replay": cfg.optim.replay,
            "model": args.model,
        },
        "features": len(trainer.train),
        "padding_share_at_max_length": round(1 - float(lengths.sum()) / (len(lengths) * width), 4),
        "product_token_share": round(computed_token_share(trainer.train, bench_windows(trainer)[:n]), 4),
        "peer": peer,
        "peer_facts": facts,
        "product_fused_adamw": bool(trainer.optimizer.param_groups[0].get("fused")),
        "features_per_update": features_per_update,
        "peer_seconds_per_update": [round(x, 4) for x in peer_times],
        "product_seconds_per_update": [round(x, 4) for x in product_times],
        "peer_examples_per_s": round(features_per_update / peer_s, 3),
        "product_examples_per_s": round(features_per_update / product_s, 3),
        "ratio_vs_peer": round(peer_s / product_s, 3),
        "median_of_paired_ratios": round(
            statistics.median(p / q for p, q in zip(peer_times[args.warmup :], product_times[args.warmup :])), 3
        ),
    }
    if peer == "hf_trainer":
        out.update(hf_trainer_examples_per_s=out["peer_examples_per_s"], ratio_vs_hf_trainer=out["ratio_vs_peer"])
    peak = gpu_peak_flops(args, trainer.device)
    if peak and peer == "hf_trainer":  # one forward/backward per feature: the formula is AdamW's
        # an update of features_per_update features drawn from the set's length distribution
        sample = lengths[torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))]
        flops = model_flops_per_update(trainer.model, sample[:features_per_update].tolist())
        out["mfu"] = {
            "model_flops_per_update": flops,
            "peak_flops": peak,
            "product": round(flops / product_s / peak, 4),
            "peer": round(flops / peer_s / peak, 4),
        }
    return out


def print_table(result: dict) -> None:
    env = result["env"]["device"]
    print(
        f"\ntraining throughput, {env.get('name') or env.get('type')} ({result['settings']['threads']} threads), "
        f"{result['settings']['updates']} measured updates per side after {result['settings']['warmup']} warm-up"
    )
    print(
        f"{'case':<14} {'peer':<11} {'pad %':>6} {'tok %':>6} {'product ex/s':>13} {'peer ex/s':>10} "
        f"{'ratio':>7} {'paired':>7} {'target':>7}"
    )
    for name, c in result["cases"].items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("PASS" if c["ratio_vs_peer"] >= target else "MISS") + f" {target}"
        print(
            f"{name:<14} {c['peer']:<11} {100 * c['padding_share_at_max_length']:>6.1f} "
            f"{100 * c['product_token_share']:>6.1f} {c['product_examples_per_s']:>13.2f} "
            f"{c['peer_examples_per_s']:>10.2f} {c['ratio_vs_peer']:>7.3f} "
            f"{c['median_of_paired_ratios']:>7.3f} {verdict:>7}"
        )
        if "mfu" in c:
            print(
                f"  MFU = Σ(6·N·t + 12·L·d·t²) / s / peak: product {100 * c['mfu']['product']:.1f} %, "
                f"peer {100 * c['mfu']['peer']:.1f} % (peak {c['mfu']['peak_flops'] / 1e12:.0f} TFLOP/s)"
            )
    sam = [result["cases"][n] for n in ("sam_default", "default") if n in result["cases"]]
    if len(sam) == 2:
        print(
            f"sam_full ÷ adamw time per update (product, default): "
            f"{sam[1]['product_examples_per_s'] / sam[0]['product_examples_per_s']:.3f}"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    keep_large_blocks_on_heap()  # as every training process does
    if args.threads:
        torch.set_num_threads(args.threads)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    started = time.perf_counter()
    result: dict[str, Any] = {
        "settings": {**vars(args), "threads": torch.get_num_threads()},
        "env": env_info(torch.device(args.device)),
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in args.cases:
            result["cases"][name] = run_case(name, args, Path(tmp) / name)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
