"""Helpers shared by the per-op test files: which backends can run here, tolerances, inputs."""

import pytest
import torch

import cuda_emu
import kdops
from kdops import _backend

cuda_emu.install()  # backend="cuda_emu": the CUDA kernels on CPU tensors, test-only (docs/cuda_emulator.md)

HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CUDA = torch.cuda.is_available()


def backend_params():
    """(backend, device) pairs of every fused backend, each skipped where it cannot run.

    ("cuda_emu", "cpu"): the CUDA kernels executed by the SIMT emulator (tests/cuda_emu.py)."""
    params = []
    for backend, device, marks in (("cpu", "cpu", ()), ("cuda_emu", "cpu", ()),
                                   ("triton", "cpu", (pytest.mark.triton,)), ("cuda", "cuda", (pytest.mark.cuda,)),
                                   ("triton", "cuda", (pytest.mark.cuda, pytest.mark.triton))):
        reason = _why_not(backend, device)
        marks = marks + ((pytest.mark.skip(reason=reason),) if reason else ())
        params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params


def _why_not(backend, device):
    if backend == "cuda_emu":
        return cuda_emu.why_not()
    if device == "cuda" and not CUDA:
        return "no CUDA device"
    if backend == "triton" and device == "cpu" and CUDA:
        return "a GPU is present: Triton is tested on it instead of the interpreter"
    return _backend._why_not(backend, torch.device(device))


def tolerance(dtype):
    """(rtol, atol) for a tensor stored in `dtype` compared with a float64 reference."""
    return {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 1e-6), torch.float16: (4e-3, 1e-4),
            torch.bfloat16: (2e-2, 1e-3)}[dtype]


def assert_close(actual, expected, dtype, scale=1.0):
    """Compare in float64; `dtype` is the dtype the actual value was stored in; `scale` widens atol
    for values that are sums over many elements."""
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * scale)


def randn(shape, dtype, device, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


def non_contiguous(x):
    """The same values as a strided view (every other element of a buffer twice as wide along the last
    dimension larger than 1). A tensor with a single element cannot be non-contiguous and is returned as is."""
    dims = [d for d in range(x.dim()) if x.shape[d] > 1]
    if not dims:
        return x
    d = dims[-1]
    wide_shape = list(x.shape)
    wide_shape[d] *= 2
    wide = torch.zeros(wide_shape, dtype=x.dtype, device=x.device)
    index = [slice(None)] * x.dim()
    index[d] = slice(None, None, 2)
    wide[tuple(index)] = x.detach()
    y = wide[tuple(index)]
    assert not y.is_contiguous()
    return y.requires_grad_(x.requires_grad)


__all__ = ["kdops", "backend_params", "tolerance", "assert_close", "randn", "non_contiguous", "DTYPES",
           "HALF_DTYPES", "CUDA"]


def backends_on_cpu():
    """Every backend that runs on CPU tensors in this session (the Triton one through the interpreter, the
    CUDA kernels through the emulator)."""
    import kdops

    backends = [b for b in ("reference", "cpu", "triton") if kdops._backend._why_not(b, torch.device("cpu")) is None]
    return backends + ([cuda_emu.NAME] if cuda_emu.why_not() is None else [])


def assert_compiles_like_eager(loss_fn, leaf, *rest):
    """torch.compile(fullgraph=True) of loss_fn gives eager's value and eager's gradient for ``leaf``."""
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    out = compiled(leaf, *rest)
    out.backward()
    grad, leaf.grad = leaf.grad, None
    expected = loss_fn(leaf, *rest)
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, leaf.grad)


def parity_shapes(backend, device, shapes, small_shapes):
    """The shapes a parity test runs: the small set under the (slow) Triton interpreter and CUDA emulator."""
    return small_shapes if backend in ("triton", "cuda_emu") and device == "cpu" else shapes


def float64_loss_and_grad(loss_fn, student, grad_out):
    """loss_fn(student in float64) and d(grad_out * loss)/d(student): the expected values of a parity test."""
    s = student.detach().double().requires_grad_()
    out = loss_fn(s)
    (out * grad_out).backward()
    return out.detach(), s.grad
