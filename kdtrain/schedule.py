"""Learning-rate schedule: linear warm-up, then constant, step or cosine decay."""

from __future__ import annotations

import math

import torch


def lr_factor(it: int, total: int, warmup_iters: int, warmup_factor: float, kind: str,
              steps: tuple = (), gamma: float = 0.1, min_factor: float = 0.0) -> float:
    if kind == "cosine":
        progress = min(1.0, it / max(1, total))
        base = min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif kind == "step":
        base = gamma ** sum(1 for s in steps if it >= s)
    elif kind == "constant":
        base = 1.0
    else:
        raise ValueError(f"unknown lr schedule {kind!r} (constant, step, cosine)")
    if it < warmup_iters:
        alpha = it / warmup_iters
        base *= warmup_factor * (1 - alpha) + alpha
    return base


def build_scheduler(optimizer, total: int, warmup_iters: int, kind: str, steps=(), gamma=0.1,
                    warmup_factor: float = 0.001):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total, warmup_iters, warmup_factor, kind, tuple(steps), gamma)
    )
