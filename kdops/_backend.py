"""Backend selection: argument > KDOPS_BACKEND > automatic. Never a silent fallback.

Automatic: CUDA tensors use the fused CUDA kernels, else the Triton ones, else the reference; CPU
tensors use the C++ kernels, else the reference. (No benchmark on a GPU has yet said which of CUDA
and Triton is faster per op; benchmarks/report.py writes that table when one does.)
"""

import functools
import importlib.util
import os
from typing import Callable, Dict, NamedTuple, Optional

import torch

from kdops import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the call."""


class TestBackend(NamedTuple):
    """A backend only tests use (kdops._registry.register_test_backend): never chosen automatically."""
    namespace: str  # torch.ops.<namespace>.<op> runs it
    why_not: Callable[[str, torch.device], Optional[str]]  # (op, device) -> None, or why it cannot run


_TEST_BACKENDS: Dict[str, TestBackend] = {}


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


def namespace(backend: str) -> str:
    """The torch.ops namespace of a fused backend's ops."""
    if backend == "triton":
        return "kdops_triton"
    if backend in _TEST_BACKENDS:
        return _TEST_BACKENDS[backend].namespace
    return "kdops"


def _requested(backend):
    if backend is None:
        backend = os.environ.get("KDOPS_BACKEND", "").strip().lower() or None
        source = "KDOPS_BACKEND"
    else:
        source = "backend"
    if backend is not None and backend not in BACKENDS and backend not in _TEST_BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def why_not(backend: str, device: torch.device, op: str = "") -> Optional[str]:
    """None when `backend` can run (`op`) on `device`, else the reason it cannot."""
    if backend in _TEST_BACKENDS:
        return _TEST_BACKENDS[backend].why_not(op, device)
    if backend == "reference":
        return None
    if backend == "cpu":
        if not _extension.native_loaded():
            return f"the native extension is not loaded ({_extension.load_error})"
        if op and not _extension.has_native_op(op):
            return _extension.STALE_BUILD.format(op=op)
        return None if device.type == "cpu" else f"the 'cpu' backend needs CPU tensors, got {device}"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend needs CUDA tensors, got {device}"
        if not _extension.cuda_kernels_built():
            return "the CUDA kernels were not built (" + (
                _extension.load_error or "extension built without CUDA") + ")"
        if op and not _extension.has_native_op(op):
            return _extension.STALE_BUILD.format(op=op)
        return None
    # triton
    if not _triton_installed():
        return "the triton package is not installed"
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
        return None
    return f"the 'triton' backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"


def resolve(op: str, device: torch.device, backend=None) -> str:
    """The backend that runs `op` on `device`."""
    wanted = _requested(backend)
    if wanted is not None:
        reason = why_not(wanted, device, op)
        if reason is not None:
            raise BackendUnavailableError(f"kdops.{op}: backend {wanted!r} cannot run: {reason}")
        return wanted
    if device.type == "cuda":
        for candidate in ("cuda", "triton"):
            if why_not(candidate, device, op) is None:
                return candidate
        return "reference"
    if device.type == "cpu" and why_not("cpu", device, op) is None:
        return "cpu"
    return "reference"


def add_test_backend(name: str, backend: TestBackend) -> None:
    """Routes backend=name to `backend` (called by kdops._registry.register_test_backend)."""
    if name in BACKENDS:
        raise ValueError(f"{name!r} is a kdops backend; a test backend needs another name")
    _TEST_BACKENDS[name] = backend
