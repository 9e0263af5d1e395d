"""Which backends can run here, and the one way tests skip when one cannot.

Besides kdops' backends, the test backend "cuda_emu" runs the CUDA kernels on CPU tensors through
the SIMT emulator (support/cuda_emu, docs/cuda_emulator.md); `backend_params()` includes it.
"""

import pytest
import torch

from kdops import _backend
from support import cuda_emu

cuda_emu.install()  # backend="cuda_emu": the CUDA kernels on CPU tensors, test-only

CUDA = torch.cuda.is_available()


def why_not(backend: str, device="cpu"):
    """None when `backend` can run on `device` tensors in this session, else the reason."""
    if backend == cuda_emu.NAME:
        return cuda_emu.why_not()  # without building the emulator (the first test that needs it does)
    if device == "cuda" and not CUDA:
        return "no CUDA device"
    if backend == "triton" and device == "cpu" and CUDA:
        return "a GPU is present: Triton is tested on it instead of the interpreter"
    return _backend.why_not(backend, torch.device(device))


def require_backend(backend: str, device="cpu") -> pytest.MarkDecorator:
    """Skip (a test, a module's tests as `pytestmark`, or a parameter) where `backend` cannot run on
    `device` tensors, with the reason."""
    reason = why_not(backend, device)
    return pytest.mark.skipif(reason is not None, reason=f"{backend} on {device}: {reason}")


def _marks(backend: str, device: str) -> tuple:
    """Skipped where it cannot run; marked `triton` / `cuda` when it runs those."""
    return ((require_backend(backend, device),) + ((pytest.mark.triton,) if backend == "triton" else ())
            + ((pytest.mark.cuda,) if device == "cuda" else ()))


def backend_param(backend: str, device="cpu", id=None):
    """pytest.param(backend, device) of a test parametrized by "backend,device"."""
    return pytest.param(backend, device, id=id or f"{backend}-{device}", marks=_marks(backend, device))


def on_cpu(*backends):
    """pytest params of these backends on CPU tensors, for a test parametrized by "backend"."""
    return [pytest.param(b, id=b, marks=_marks(b, "cpu")) for b in backends]


# Every fused backend: the C++ kernels, the CUDA kernels under the emulator, Triton through its
# interpreter (without a GPU), and the CUDA and Triton kernels on a GPU.
FUSED = (("cpu", "cpu"), (cuda_emu.NAME, "cpu"), ("triton", "cpu"), ("cuda", "cuda"), ("triton", "cuda"))


def backend_params():
    """(backend, device) pairs of every fused backend, each skipped where it cannot run."""
    return [backend_param(backend, device) for backend, device in FUSED]


def opcheck_params():
    """(backend, device) of the registered ops torch.library.opcheck checks: the native and the Triton ones
    (the emulator's ops are test-only, without fake kernels)."""
    return [backend_param(backend, device) for backend, device in FUSED if backend != cuda_emu.NAME]


def registered_op(name: str, backend: str):
    """The dispatcher op that `backend` runs for kdops.<name> (torch.ops.kdops.<name> or kdops_triton's)."""
    return getattr(getattr(torch.ops, _backend.namespace(backend)), name).default


def backends_on_cpu():
    """Every backend that runs on CPU tensors in this session (the Triton one through the interpreter, the
    CUDA kernels through the emulator)."""
    return [b for b in ("reference", "cpu", "triton", cuda_emu.NAME) if why_not(b) is None]
