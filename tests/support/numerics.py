"""Dtypes, tolerances and random inputs shared by the op tests."""

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def acc_dtype(dtype):
    """The dtype kdops computes and returns losses in for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tolerance(dtype):
    """(rtol, atol) for a tensor stored in `dtype` compared with a float64 reference."""
    return {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 1e-6), torch.float16: (4e-3, 1e-4),
            torch.bfloat16: (2e-2, 1e-3)}[dtype]


def assert_close(actual, expected, dtype, scale=1.0, msg=None):
    """Compare in float64; `dtype` is the dtype the actual value was stored in; `scale` widens atol
    for values that are sums over many elements."""
    rtol, atol = tolerance(dtype)
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol * scale, msg=msg)


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
