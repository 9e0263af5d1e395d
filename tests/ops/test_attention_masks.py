"""kdops.attention_masks (docs/math.md §1): every backend against the reference, gradients, registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import attention_masks as reference
from support import parity
from support.backends import backend_params, on_cpu, opcheck_params, registered_op, require_backend
from support.numerics import assert_close, assert_compiles_like_eager, randn


def _case_inputs(case, dtype, device):
    temperature = 0.5 if case.index % 2 == 0 else 0.8
    return dict(feat=randn(case.shape, dtype, device, case.seed, requires_grad=True), temperature=temperature)


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: kdops.attention_masks(**a, backend=backend),
    expected=lambda feat, temperature: reference.attention_masks(feat, temperature=temperature),
    shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)],
    small_shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)], small_for=("triton",), strided=("feat",),
    out_scale=1.0, grad_scale=10)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


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


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
def test_gradcheck_float64(backend):
    feat = randn((2, 3, 4, 5), torch.float64, "cpu", 5, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: kdops.attention_masks(f, temperature=0.6, backend=backend), (feat,))


@pytest.mark.parametrize("backend,device", opcheck_params())
def test_opcheck(backend, device):
    op = registered_op("attention_masks", backend)
    feat = randn((2, 3, 4, 5), torch.float32, device, 7, requires_grad=True)
    opcheck(op, (feat, 0.5))


def test_compile_fullgraph():
    def loss_fn(feat):
        spatial, channel = kdops.attention_masks(feat, temperature=0.5)
        return (spatial * spatial).mean() + channel.max()

    feat = randn((2, 4, 6, 5), torch.float32, "cpu", 9, requires_grad=True)
    assert_compiles_like_eager(loss_fn, feat)


@pytest.mark.parametrize("backend", on_cpu("reference", "cpu"))
def test_empty_batch_returns_empty_masks(backend):
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
    (torch.randn(2, 3, 4, 5), {"temperature": 0.0}, ValueError, "temperature must be a finite number >= 1e-30"),
    (torch.randn(2, 3, 4, 5), {"temperature": 1e-39}, ValueError, "temperature must be a finite number >= 1e-30"),
    (torch.randn(2, 3, 4, 5), {"backend": "tpu"}, ValueError, "backend must be one of"),
    (torch.randn(2, 3, 4, 5), {"backend": "cuda"}, kdops.BackendUnavailableError, "backend 'cuda' cannot run"),
])
def test_bad_input(bad, kwargs, error, match):
    with pytest.raises(error, match=match):
        kdops.attention_masks(bad, **kwargs)


@require_backend("cpu")
def test_native_kernel_checks_its_own_arguments():
    """Direct torch.ops callers get the same kind of message from C++."""
    with pytest.raises(RuntimeError, match="feat must be a 4-D"):
        torch.ops.kdops.attention_masks(torch.randn(3, 4), 0.5)
    with pytest.raises(RuntimeError, match="temperature must be a finite number >= 1e-30"):
        torch.ops.kdops.attention_masks(torch.randn(1, 2, 3, 4), -1.0)
