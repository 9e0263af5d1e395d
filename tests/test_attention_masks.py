"""kdops.attention_masks (docs/math.md §1): every backend against the reference, gradients, registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import attention_masks as reference
from support import DTYPES, assert_close, assert_compiles_like_eager, backend_params, non_contiguous, randn

SHAPES = [(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)]
SMALL_SHAPES = [(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)]  # for the Triton interpreter


def _shapes(backend, device):
    return SMALL_SHAPES if backend == "triton" and device == "cpu" else SHAPES


def _weighted(spatial, channel, seed):
    """A loss with grad_output other than 1 on both masks."""
    w_s = randn(spatial.shape, torch.float64, spatial.device, seed + 1)
    w_c = randn(channel.shape, torch.float64, channel.device, seed + 2)
    return (spatial.double() * w_s).sum() + (channel.double() * w_c).sum()


def _expected(feat, temperature, seed):
    """Reference masks and gradient computed in float64 from the same (rounded) input values."""
    f64 = feat.detach().double().requires_grad_()
    spatial, channel = reference.attention_masks(f64, temperature=temperature)
    _weighted(spatial, channel, seed).backward()
    return spatial.detach(), channel.detach(), f64.grad


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,))
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_matches_reference(backend, device, dtype, layout):
    for i, shape in enumerate(_shapes(backend, device)):
        seed = torch.randint(0, 2**31 - 1, ()).item() + i  # fresh inputs every run
        feat = randn(shape, dtype, device, seed)
        if layout == "non_contiguous":
            feat = non_contiguous(feat)
        feat.requires_grad_()
        temperature = 0.5 if i % 2 == 0 else 0.8
        spatial, channel = kdops.attention_masks(feat, temperature=temperature, backend=backend)
        exp_s, exp_c, exp_g = _expected(feat, temperature, seed)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert spatial.dtype == channel.dtype == acc
        assert_close(spatial, exp_s, acc)
        assert_close(channel, exp_c, acc)
        _weighted(spatial, channel, seed).backward()
        assert feat.grad.dtype == dtype and feat.grad.shape == feat.shape
        assert_close(feat.grad, exp_g, dtype, scale=10)


@pytest.mark.parametrize("backend,device", backend_params())
def test_one_mask_used(backend, device):
    """The gradient of an unused output is zero (it arrives as None in the backward)."""
    feat = randn((2, 5, 4, 6), torch.float32, device, 3, requires_grad=True)
    _, channel = kdops.attention_masks(feat, backend=backend)
    channel[:, 1].sum().backward()
    f64 = feat.detach().double().requires_grad_()
    reference.attention_masks(f64)[1][:, 1].sum().backward()
    assert_close(feat.grad, f64.grad, torch.float32, scale=10)


def test_reference_closed_form_backward_matches_autograd():
    feat = randn((2, 6, 5, 7), torch.float64, "cpu", 11, requires_grad=True)
    spatial, channel = reference.attention_masks(feat, temperature=0.7)
    g_s, g_c = randn(spatial.shape, torch.float64, "cpu", 12), randn(channel.shape, torch.float64, "cpu", 13)
    expected = torch.autograd.grad((spatial * g_s).sum() + (channel * g_c).sum(), feat)[0]
    closed = reference.attention_masks_backward(g_s, g_c, feat, spatial.detach(), channel.detach(), 0.7)
    torch.testing.assert_close(closed, expected)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_float64(backend):
    if kdops.available_backends()[backend] != "available":
        pytest.skip(kdops.available_backends()[backend])
    feat = randn((2, 3, 4, 5), torch.float64, "cpu", 5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: kdops.attention_masks(f, temperature=0.6, backend=backend), (feat,))


@pytest.mark.parametrize("backend,device", backend_params())
def test_opcheck(backend, device):
    op = torch.ops.kdops_triton.attention_masks if backend == "triton" else torch.ops.kdops.attention_masks
    feat = randn((2, 3, 4, 5), torch.float32, device, 7, requires_grad=True)
    opcheck(op.default, (feat, 0.5))


def test_compile_fullgraph():
    def loss_fn(feat):
        spatial, channel = kdops.attention_masks(feat, temperature=0.5)
        return (spatial * spatial).mean() + channel.max()

    feat = randn((2, 4, 6, 5), torch.float32, "cpu", 9, requires_grad=True)
    assert_compiles_like_eager(loss_fn, feat)


def test_empty_batch_returns_empty_masks():
    for backend in ("reference", "cpu"):
        if kdops.available_backends()[backend] != "available":
            continue
        spatial, channel = kdops.attention_masks(torch.zeros(0, 4, 3, 5), backend=backend)
        assert spatial.shape == (0, 3, 5) and channel.shape == (0, 4)


def test_does_not_write_into_the_input():
    feat = randn((2, 3, 4, 5), torch.float32, "cpu", 1, requires_grad=True)
    before = feat.detach().clone()
    spatial, channel = kdops.attention_masks(feat)
    (spatial.sum() + channel.sum()).backward()
    assert torch.equal(feat.detach(), before)


@pytest.mark.parametrize("bad,kwargs,error,match", [
    (torch.randn(2, 3, 4), {}, ValueError, "feat must be a 4-D"),
    (torch.randint(0, 5, (2, 3, 4, 5)), {}, TypeError, "feat must be float16"),
    ([[1.0]], {}, TypeError, "feat must be a torch.Tensor"),
    (torch.randn(2, 0, 4, 5), {}, ValueError, "C >= 1 and H\\*W >= 1"),
    (torch.randn(2, 3, 0, 5), {}, ValueError, "C >= 1 and H\\*W >= 1"),
    (torch.randn(2, 3, 4, 5), {"temperature": 0.0}, ValueError, "temperature must be a number > 0"),
    (torch.randn(2, 3, 4, 5), {"backend": "tpu"}, ValueError, "backend must be one of"),
    (torch.randn(2, 3, 4, 5), {"backend": "cuda"}, kdops.BackendUnavailableError, "backend 'cuda' cannot run"),
])
def test_bad_input(bad, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.attention_masks(bad, **kwargs)


def test_native_kernel_checks_its_own_arguments():
    """Direct torch.ops callers get the same kind of message from C++."""
    if kdops.available_backends()["cpu"] != "available":
        pytest.skip("native extension not built")
    with pytest.raises(RuntimeError, match="feat must be a 4-D"):
        torch.ops.kdops.attention_masks(torch.randn(3, 4), 0.5)
    with pytest.raises(RuntimeError, match="temperature must be > 0"):
        torch.ops.kdops.attention_masks(torch.randn(1, 2, 3, 4), -1.0)
