"""The optimizer of a run: AdamW (fused where torch has it) with decay groups, wrapped in SAM unless replay is none,
and its linear warmup/decay schedule."""

from __future__ import annotations

import torch

from sam import SAM


def fused_adamw_available(device) -> bool:
    """Whether the installed torch has a fused AdamW kernel for fp32 parameters on `device` (asked of torch itself:
    constructing one raises RuntimeError where there is none)."""
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except RuntimeError:
        return False
    return True


def build_optimizer(model, optim_cfg):
    """AdamW with no weight decay on biases and LayerNorm weights; wrapped in SAM unless replay is none.

    `optim.fused`: null uses the fused kernel where torch has one for the parameters' device, true requires it
    (ValueError otherwise), false never uses it. The chosen setting is in the optimizer's param groups ("fused").

    For ASAM the param groups also say which tensors are weights (`is_weight`, T = |w| + eta) and which are biases
    (T = 1), by name as the authors' code does (SamsungLabs/ASAM: "weight" in the parameter's name), so LayerNorm
    scales count as weights and every bias, the new QA head's included, as a bias."""
    decay, no_decay_weights, biases = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and "LayerNorm" not in name and "layer_norm" not in name:
            decay.append(p)
        else:
            (no_decay_weights if name.rsplit(".", 1)[-1].endswith("weight") else biases).append(p)
    groups = [
        {"params": decay, "weight_decay": optim_cfg.weight_decay, "is_weight": True},
        {"params": no_decay_weights, "weight_decay": 0.0, "is_weight": True},
        {"params": biases, "weight_decay": 0.0, "is_weight": False},
    ]
    groups = [g for g in groups if g["params"]]
    device = next(model.parameters()).device
    fused = optim_cfg.fused
    if fused is None:
        fused = fused_adamw_available(device)
    elif fused and not fused_adamw_available(device):
        raise ValueError(
            f"optim.fused=true but torch {torch.__version__} has no fused AdamW on {device.type}; "
            f"set optim.fused=null (use it where available) or false"
        )
    kwargs = dict(lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, fused=bool(fused))
    if optim_cfg.replay == "none":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "is_weight"} for g in groups], **kwargs)
    return SAM(groups, torch.optim.AdamW, rho=optim_cfg.rho, adaptive=optim_cfg.adaptive, eta=optim_cfg.eta, **kwargs)


def linear_schedule(optimizer, total_updates: int, warmup_ratio: float):
    """lr × u/W during warmup (W updates), then linear decay to 0 at `total_updates`; stepped once per update."""
    warmup = int(round(warmup_ratio * total_updates))

    def factor(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        return max(0.0, (total_updates - update) / max(1, total_updates - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
