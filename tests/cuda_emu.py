"""The "cuda_emu" test backend: csrc/cuda/*.cu run on CPU tensors by the SIMT emulator (docs/cuda_emulator.md).

Test-only: kdops itself knows no such backend. install() wraps kdops._backend.resolve and
kdops._registry.Op.__call__ so that backend="cuda_emu" runs torch.ops.kdops_emu.<op>, whose schemas
come from each op's OP_SPEC and whose autograd is the op's own (the Python twin used for the Triton
op); the kernels are the CUDA entry points, registered for CPU tensors by csrc/emu/build.py's library.
The library is built on first use (minutes on 2 cores, then cached under build/cuda_emu).
"""

import functools
import importlib
import importlib.util
import os
import pkgutil
import shutil

import torch

from kdops import _backend, _registry

NAME = "cuda_emu"
NAMESPACE = "kdops_emu"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    spec = importlib.util.spec_from_file_location("kdops_emu_build", os.path.join(_ROOT, "csrc", "emu", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def op_specs():
    import kdops.ops

    specs = []
    for info in pkgutil.iter_modules(kdops.ops.__path__):
        spec = getattr(importlib.import_module(f"kdops.ops.{info.name}"), "OP_SPEC", None)
        if spec is not None:
            specs.append(spec)
    return specs


@functools.lru_cache(maxsize=None)
def load():
    """Builds (cached) and loads the emulation library; defines the kdops_emu ops and their autograd."""
    reason = why_not()
    if reason is not None:
        raise RuntimeError(reason)
    lib = torch.library.Library(NAMESPACE, "DEF")
    specs = op_specs()
    for op in specs:
        lib.define(op.name + op.schema)
        if op.backward_schema is not None:
            lib.define(op.name + "_backward" + op.backward_schema)
    _build_module().build()  # torch.ops.load_library: registers the kernels for CPU tensors
    namespace = getattr(torch.ops, NAMESPACE)
    for op in specs:
        if op.backward_schema is not None:
            torch.library.register_autograd(
                f"{NAMESPACE}::{op.name}", _registry._autograd_backward(op, getattr(namespace, op.name + "_backward")),
                setup_context=_registry._setup_context(op), lib=lib)
    return lib  # kept alive by the cache: dropping it would remove the definitions


def has_kernel(op_name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op_name}", "CPU")


def install():
    """Routes backend="cuda_emu" (tests only). Idempotent."""
    if getattr(_backend.resolve, "_cuda_emu", False):
        return
    resolve, call = _backend.resolve, _registry.Op.__call__

    def emu_resolve(op, device, backend=None, supported=_backend.BACKENDS):
        if backend != NAME:
            return resolve(op, device, backend, supported)
        if "cuda" not in supported:
            raise _backend.BackendUnavailableError(f"kdops.{op}: backend {NAME!r} cannot run: no CUDA kernel")
        if device.type != "cpu":
            raise _backend.BackendUnavailableError(f"kdops.{op}: backend {NAME!r} runs on CPU tensors, got {device}")
        load()
        if not has_kernel(op):
            raise _backend.BackendUnavailableError(f"kdops.{op}: backend {NAME!r}: no kernel registered")
        return NAME

    def emu_call(self, backend, **arguments):
        if backend != NAME:
            return call(self, backend, **arguments)
        return getattr(getattr(torch.ops, NAMESPACE), self.name)(*(arguments[n] for n in self.args))

    emu_resolve._cuda_emu = True
    _backend.resolve, _registry.Op.__call__ = emu_resolve, emu_call
