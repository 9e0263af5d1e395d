"""Atomic checkpoints: write a temporary file in the same folder, fsync, os.replace.

A run killed mid-write leaves the previous checkpoint intact, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import tempfile

import numpy as np
import torch

from kdtrain.errors import UsageError, require_file

LAST = "checkpoint_last.pth"


def atomic_save(obj, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: str, map_location="cpu") -> dict:
    require_file(path, "checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:  # what torch.load raises on a non-checkpoint
        raise UsageError(f"cannot read checkpoint {path}: {e}") from e


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
