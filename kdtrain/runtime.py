"""Threads, seeds, the device and mixed precision: process-wide settings for a run."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch


def set_threads(threads: int | None, local_world_size: int = 1) -> int:
    """All cores by default, split between the processes on this machine."""
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, local_world_size))
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(amp: str, device: torch.device):
    """None (full precision) on CPU or when off; bf16 where supported, else fp16, on GPU."""
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"--amp must be auto, off, bf16 or fp16, not {amp!r}")
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(name: str) -> torch.device:
    """--device of a single-process command: cuda for cuda, and for auto when a GPU is visible; else cpu."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
