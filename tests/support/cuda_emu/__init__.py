"""The "cuda_emu" test backend: csrc/cuda/*.cu run on CPU tensors by the SIMT emulator (docs/cuda_emulator.md).

Test-only: install() adds it through kdops._registry.register_test_backend, so backend="cuda_emu" runs
torch.ops.kdops_emu.<op>, whose schemas and autograd are each op's own declaration; the kernels are
the CUDA entry points, registered for CPU tensors by build.py's library. The library is built on first
use (minutes on 2 cores, then cached under build/cuda_emu).
"""

import functools
import importlib.util
import os
import shutil

import torch

from kdops import _registry

NAME = "cuda_emu"
NAMESPACE = "kdops_emu"
_HERE = os.path.dirname(os.path.abspath(__file__))


def why_not():
    """None when the emulated backend can run here, else the reason."""
    if os.environ.get("KDOPS_TEST_CUDA_EMU", "1").strip() == "0":
        return "KDOPS_TEST_CUDA_EMU=0"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) to build the CUDA emulator"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (torch.utils.cpp_extension builds the CUDA emulator with it)"
    return None


def _build_module():
    spec = importlib.util.spec_from_file_location("kdops_emu_build", os.path.join(_HERE, "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def load() -> None:
    """Builds (cached) and loads the emulation library: the kernels of the kdops_emu ops install() defined."""
    reason = why_not()
    if reason is not None:
        raise RuntimeError(reason)
    install()
    _build_module().build()  # torch.ops.load_library: registers the kernels for CPU tensors


def has_kernel(op_name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op_name}", "CPU")


def _why_not_op(op: str, device: torch.device):
    reason = why_not()
    if reason is not None:
        return reason
    if device.type != "cpu":
        return f"the {NAME!r} backend runs on CPU tensors, got {device}"
    load()
    return None if has_kernel(op) else "no kernel registered"


@functools.lru_cache(maxsize=None)
def install() -> torch.library.Library:
    """Adds backend="cuda_emu" (tests only). Idempotent; the library is built on the first call that needs it."""
    return _registry.register_test_backend(NAME, NAMESPACE, _why_not_op)  # kept alive by the cache
