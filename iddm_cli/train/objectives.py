"""Registries for losses, optimizers and learning-rate schedules. Keys equal those in :mod:`iddm_cli.choices`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

LOSSES: dict[str, Callable[[], nn.Module]] = {
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "huber": nn.HuberLoss,  # delta 1
    "smooth_l1": nn.SmoothL1Loss,
}

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr, fused=True),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr, fused=True),  # weight decay 0.01 (as IDDM)
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.937, fused=True),  # IDDM's momentum
}


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` with its fused kernel (CPU and CUDA), which skips a step on the device when its
    ``found_inf`` is set, with no copy to the host. SGD's momentum buffers start at zero, which gives the same first
    step as torch's copy of the gradient and keeps a skipped first step from leaving them uninitialised."""
    params = list(params)
    optimizer = OPTIMIZERS[name](params, lr)
    if isinstance(optimizer, torch.optim.SGD):
        for p in params:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


COSINE_FLOOR = 0.01  # cosine schedules end at 1% of the peak, as in IDDM


def _cosine(progress: float) -> float:
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def constant_lr(step: int, total: int, warmup: int) -> float:
    return 1.0


def cosine_lr(step: int, total: int, warmup: int) -> float:
    return _cosine(step / max(total, 1))


def warmup_cosine_lr(step: int, total: int, warmup: int) -> float:
    """Linear warm-up that starts above zero ((step+1)/warmup), then cosine decay over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    return _cosine((step - warmup) / max(total - warmup, 1))


# lr multiplier at a 0-based optimizer step, given the total steps and warm-up steps.
LR_FUNCS: dict[str, Callable[[int, int, int], float]] = {
    "linear": constant_lr,  # IDDM's name for a constant learning rate
    "cosine": cosine_lr,
    "warmup_cosine": warmup_cosine_lr,
}
