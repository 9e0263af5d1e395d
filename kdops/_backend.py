"""Backend selection: argument > KDOPS_BACKEND > automatic. Never a silent fallback.

Automatic: CUDA tensors use the faster of the fused CUDA and Triton kernels (see _preferred.py),
else the reference; CPU tensors use the C++ kernels, else the reference.
"""

import functools
import importlib.util
import os

import torch

from kdops import _extension
from kdops._preferred import DEFAULT_GPU_BACKEND, PREFERRED_GPU_BACKEND

BACKENDS = ("reference", "cpu", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the call."""


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip() == "1"


def available_backends() -> dict:
    """Each backend mapped to "available" or to the reason it is not."""
    native = "available" if _extension.native_loaded() else f"native extension not loaded ({_extension.load_error})"
    if not _extension.native_loaded():
        cuda = native
    elif not _extension.cuda_kernels_built():
        cuda = ("the extension was built without the CUDA kernels (no GPU, toolkit or CUDA torch at build time, "
                "or KDOPS_NO_CUDA=1); rebuild with FORCE_CUDA=1 to get them (README, Set-up)")
    elif not torch.cuda.is_available():
        cuda = "built, but no CUDA device is visible"
    else:
        cuda = "available"
    if not _triton_installed():
        triton = "the triton package is not installed"
    elif torch.cuda.is_available():
        triton = "available"
    elif triton_interpreting():
        triton = "available on CPU tensors through the interpreter (TRITON_INTERPRET=1)"
    else:
        triton = "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU through the interpreter)"
    return {"reference": "available", "cpu": native, "cuda": cuda, "triton": triton}


def _requested(backend):
    if backend is None:
        backend = os.environ.get("KDOPS_BACKEND", "").strip().lower() or None
        source = "KDOPS_BACKEND"
    else:
        source = "backend"
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def _why_not(backend: str, device: torch.device):
    """None when `backend` can run on `device`, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if not _extension.native_loaded():
            return f"the native extension is not loaded ({_extension.load_error})"
        return None if device.type == "cpu" else f"the 'cpu' backend needs CPU tensors, got {device}"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend needs CUDA tensors, got {device}"
        if not _extension.cuda_kernels_built():
            return "the CUDA kernels were not built (" + (
                _extension.load_error or "extension built without CUDA") + ")"
        return None
    # triton
    if not _triton_installed():
        return "the triton package is not installed"
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
        return None
    return f"the 'triton' backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"


def resolve(op: str, device: torch.device, backend=None, supported=BACKENDS) -> str:
    """The backend that runs `op` on `device`; `supported` lists the backends the op has."""
    wanted = _requested(backend)
    if wanted is not None:
        if wanted in supported:
            reason = _why_not(wanted, device)
        else:
            *rest, last = map(repr, supported)
            reason = f"kdops.{op} has only the {', '.join(rest)} and {last} backends"
        if reason is not None:
            raise BackendUnavailableError(f"kdops.{op}: backend {wanted!r} cannot run: {reason}")
        return wanted
    if device.type == "cuda":
        first = PREFERRED_GPU_BACKEND.get(op, DEFAULT_GPU_BACKEND)
        for candidate in (first, "triton" if first == "cuda" else "cuda"):
            if candidate in supported and _why_not(candidate, device) is None:
                return candidate
        return "reference"
    if device.type == "cpu" and "cpu" in supported and _extension.native_loaded():
        return "cpu"
    return "reference"
