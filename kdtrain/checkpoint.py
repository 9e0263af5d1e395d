"""Atomic checkpoints: write a temporary file in the same folder, fsync, os.replace.

A run killed mid-write leaves the previous checkpoint intact, never a torn one. Checkpoints are read
with ``weights_only=True``: a kdtrain checkpoint holds only tensors, numbers, strings and containers,
so a file that asks the unpickler for anything else (a payload that would run code) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import random
import tempfile

import numpy as np
import torch

from kdtrain.errors import RunStopped, UsageError, require_file

LAST = "checkpoint_last.pth"
TMP_PREFIX, TMP_SUFFIX = ".tmp_", ".pth"


# Below this much free space a failed write is reported as a full disk (torch.save's own error on a full disk is
# "[enforce fail at inline_container.cc] unexpected pos", which does not say so).
LOW_DISK_BYTES = 64 << 20


def atomic_save(obj, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            full = _disk_full(e, folder)
            if full:
                raise RunStopped(full) from e
        raise


def _disk_full(error: BaseException, folder: str) -> str | None:
    """The message for a write that failed on a full disk, None for any other failure."""
    free = shutil.disk_usage(folder).free
    if getattr(error, "errno", None) != errno.ENOSPC and free >= LOW_DISK_BYTES:
        return None
    return (f"cannot write a checkpoint in {folder}: the disk is full ({free / 2**20:.1f} MiB free; "
            f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:120]}). The previous checkpoint "
            "is intact: free some space and run the same command again to resume from it")


def rng_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, keys.tolist(), pos, has_gauss, gauss)  # plain types: loadable with weights_only
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: str, map_location="cpu") -> dict:
    require_file(path, "checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = unsafe_globals(path)
        if unsafe:
            raise refused(path, unsafe) from None
        raise _unreadable(path, e) from e
    except Exception as e:  # a torn or foreign file: torch.load raises EOFError, RuntimeError, KeyError, ...
        raise _unreadable(path, e) from e


def _unreadable(path: str, error: Exception) -> UsageError:
    # torch's texts run to many lines, and its weights_only advice (load with weights_only=False) is
    # exactly what must not be done with a file of unknown origin: name the error type only then.
    detail = "" if isinstance(error, pickle.UnpicklingError) else \
        f": {(str(error).strip().splitlines() or [''])[0][:200]}"
    return UsageError(f"cannot read checkpoint {path}: not a torch checkpoint, or a torn one "
                      f"({type(error).__name__}{detail})")


def refused(path: str, unsafe: list[str], writer: str = "kdtrain",
            holds: str = "tensors, numbers, strings and containers") -> UsageError:
    """The one line for a checkpoint whose pickle asks for ``unsafe`` globals, which a checkpoint written by
    ``writer`` never holds (it holds only ``holds``)."""
    article = "an" if writer[:1].lower() in "aeiou" else "a"
    return UsageError(f"refused to load checkpoint {path}: it holds {', '.join(unsafe)}, which {article} {writer} "
                      f"checkpoint never does (only {holds}); loading it could run code. Use checkpoints written "
                      f"by {writer}, or re-save the weights you trust as a plain state_dict")


def unsafe_globals(path: str, allowed: tuple = ()) -> list[str]:
    """The types a checkpoint asks the unpickler for beyond weights_only's, and beyond ``allowed`` (their names)."""
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # not a zip checkpoint at all: the caller reports the load error instead
        return []


def remove_torn_writes(folder: str) -> list[str]:
    """Delete the temporary files of writes killed before their os.replace (one process per run folder)."""
    if not os.path.isdir(folder):
        return []
    torn = sorted(n for n in os.listdir(folder) if n.startswith(TMP_PREFIX) and n.endswith(TMP_SUFFIX))
    for name in torn:
        remove(os.path.join(folder, name))
    return torn


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
