"""What the SAM benchmarks share (experiments.bench_sam, experiments.bench_ddp): the model under test, a window of
random micro-batches, its loss, the size of one parameter copy, and the "env" block of their JSON."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable

import torch

from .model import embedded_model_path, hub_access
from .provenance import REPO_ROOT, device_name, git_info, package_version, utc_now
from .schema import EMBEDDED_MODEL


def load_bench_model(name: str | None, seq: int) -> tuple[torch.nn.Module, str]:
    """(BertForQuestionAnswering-like model in train mode, where it came from). name: None or "embedded" (the
    embedded MiniLM), "tiny" (a random 2-layer BERT with a 128-token vocabulary, max(64, seq) positions), a local
    folder or a hub name. Raises SystemExit (one line) when it cannot be loaded."""
    # transformers here, not at the top: `--help` of the benchmarks should not wait for it
    import transformers

    from .allocator import keep_large_blocks_on_heap

    keep_large_blocks_on_heap()  # the benchmarks allocate gradients as training does
    from transformers import AutoModelForQuestionAnswering, BertConfig, BertForQuestionAnswering

    transformers.logging.set_verbosity_error()  # the "newly initialized qa_outputs" report is expected here
    transformers.logging.disable_progress_bar()
    if name == "tiny":
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=max(64, seq),
        )
        return BertForQuestionAnswering(config).train(), "tiny random BertForQuestionAnswering"
    if name is None or name == EMBEDDED_MODEL:
        name = embedded_model_path()
    access = hub_access(name, name)  # a hub name without network: the cache, or an error in seconds
    # fp32 weights whatever the checkpoint stores: bf16 runs use autocast, the parameters stay fp32
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(name, dtype=torch.float32, **access)
    except OSError as err:
        why = "the hub is not reachable and the local cache has no copy" if access else str(err).splitlines()[0]
        raise SystemExit(
            f"error: --model {name!r} could not be loaded ({why}); use --model embedded, tiny or a local folder"
        ) from None
    return model.train(), name


def make_window(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """k micro-batches of random tokens and random start/end labels (fixed seed)."""
    config = model.config
    if args.seq > config.max_position_embeddings:
        raise SystemExit(
            f"--seq {args.seq} exceeds the model's max_position_embeddings ({config.max_position_embeddings})"
        )
    g = torch.Generator().manual_seed(args.seed)
    window = []
    for _ in range(args.k):
        shape = (args.micro_batch, args.seq)
        batch = {
            "input_ids": torch.randint(0, config.vocab_size, shape, generator=g),
            "attention_mask": torch.ones(shape, dtype=torch.long),
            "token_type_ids": torch.zeros(shape, dtype=torch.long),
            "start_positions": torch.randint(0, args.seq, (args.micro_batch,), generator=g),
            "end_positions": torch.randint(0, args.seq, (args.micro_batch,), generator=g),
        }
        window.append({key: t.to(device) for key, t in batch.items()})
    return window


def make_loss_fn(model: torch.nn.Module, device: torch.device, dtype: str) -> Callable[[dict], torch.Tensor]:
    def loss_fn(batch: dict) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            return model(**batch).loss

    return loss_fn


def param_bytes(model: torch.nn.Module) -> int:
    """Σ numel · element size over all parameters: one 'parameter copy'."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def environment(device: torch.device, args) -> dict:
    """The "env" block of a benchmark's JSON (bench_sam, bench_ddp); git, versions, names and time come from
    experiments.provenance, as env.json's do."""
    git = git_info(REPO_ROOT)
    return {
        "git_sha": git["sha"],
        "git_dirty": git["dirty"],
        "device": device.type,
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "pytorch_optimizer": package_version("pytorch_optimizer"),
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "argv": sys.argv,
        "time_utc": utc_now(),
    }
