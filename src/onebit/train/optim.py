"""Optimizers with split weight decay, and the learning-rate schedule.

Parameter groups:
- ``binary``: the latent weights of binary layers, with ``binary_weight_decay``;
- ``real``:   other weights with two or more dimensions (real convs, linear), ``weight_decay``;
- ``no_decay``: BN parameters, biases and every 1-D parameter (thresholds, RPReLU, scales), with
  ``norm_bias_weight_decay``: 0 by default, as most CNN recipes.  BNext (paper 004 Sec. 5.1:
  1e-8 on binary, 1e-3 on non-binary parameters; its code decays BN, PReLU and biases too) is
  ``binary_weight_decay=1e-8, weight_decay=norm_bias_weight_decay=1e-3``.

Schedule: linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then cosine to
``min_lr`` at the end; a pure function of the global step (nothing to save on resume).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..layers.binary import BinaryLayer


def param_groups(model: nn.Module, weight_decay: float, binary_weight_decay: float | None,
                 norm_bias_weight_decay: float = 0.0) -> list[dict]:
    binary_ids = {id(m.weight) for m in model.modules() if isinstance(m, BinaryLayer) and m.binary_weights}
    groups = {"binary": [], "real": [], "no_decay": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in binary_ids:
            groups["binary"].append(p)
        elif p.dim() >= 2:
            groups["real"].append(p)
        else:
            groups["no_decay"].append(p)
    bwd = weight_decay if binary_weight_decay is None else binary_weight_decay
    decay = {"binary": bwd, "real": weight_decay, "no_decay": norm_bias_weight_decay}
    return [{"params": ps, "weight_decay": decay[name], "group": name} for name, ps in groups.items() if ps]


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg["weight_decay"], cfg["binary_weight_decay"], cfg["norm_bias_weight_decay"])
    name, lr = cfg["optimizer"], cfg["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg["betas"]))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg["betas"]))
    raise ValueError(f"unknown optimizer {name!r}; allowed: sgd, adam, adamw")


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float = 0.0,
          min_lr: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``: linear warm-up, then cosine."""
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    r = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * r))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
