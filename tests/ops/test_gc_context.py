"""kdops.gc_context (docs/math.md §4): every backend against the reference, gradients, registration, bad input."""

import pytest
import torch
from torch.library import opcheck

import kdops
from kdops.reference import gc_context as reference
from support import parity
from support.backends import backend_params, on_cpu, opcheck_params, registered_op, require_backend
from support.numerics import assert_close, randn


def _params(c, device, seed):
    weight = randn((1, c, 1, 1), torch.float32, device, seed) / c ** 0.5
    bias = randn((1,), torch.float32, device, seed + 1)
    return weight.requires_grad_(), bias.requires_grad_()


def _expected(feat, weight, bias, grad_out):
    f = feat.detach().double().requires_grad_()
    w = weight.detach().double().reshape(-1).requires_grad_()
    b = bias.detach().double().requires_grad_()
    context, _ = reference.gc_context(f, w, b)
    (context * grad_out).sum().backward()
    return context.detach(), f.grad, w.grad


def _case_inputs(case, dtype, device):
    weight, bias = _params(case.shape[1], device, case.seed + 2)
    return dict(feat=randn(case.shape, dtype, device, case.seed, requires_grad=True), weight=weight, bias=bias)


def _bias_gets_exactly_zero(args):
    assert torch.equal(args["bias"].grad, torch.zeros_like(args["bias"]))  # softmax is shift-invariant


PARITY = parity.Parity(
    inputs=_case_inputs, run=lambda backend, **a: (kdops.gc_context(**a, backend=backend),),
    expected=lambda feat, weight, bias: reference.gc_context(feat, weight.reshape(-1), bias)[:1],
    shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (3, 257, 1, 1), (2, 7, 37, 41), (1, 257, 13, 21)],
    small_shapes=[(2, 3, 13, 21), (1, 1, 1, 1), (1, 33, 5, 7)], strided=("feat",),
    grad_scale={"feat": 10, "weight": 100, "bias": 100}, after_backward=_bias_gets_exactly_zero)


@pytest.mark.parametrize("backend,device,dtype,layout", parity.params())
def test_matches_reference(backend, device, dtype, layout):
    parity.check(PARITY, backend, device, dtype, layout)


@pytest.mark.parametrize("backend,device", backend_params())
def test_detached_feature_still_trains_the_weight(backend, device):
    """A detached teacher feature: only the weight gradient (need_feat = false in the backward)."""
    feat = randn((2, 5, 6, 7), torch.float32, device, 3)
    weight, bias = _params(5, device, 4)
    context = kdops.gc_context(feat, weight, bias, backend=backend)
    context.pow(2).sum().backward()
    _, _, exp_gw = _expected(feat, weight, bias, 2 * context.detach().double())
    assert_close(weight.grad.reshape(-1), exp_gw, torch.float32, scale=100)


def test_reference_closed_form_backward_matches_autograd():
    feat = randn((2, 6, 5, 7), torch.float64, "cpu", 11, requires_grad=True)
    weight = randn((6,), torch.float64, "cpu", 12, requires_grad=True)
    bias = randn((1,), torch.float64, "cpu", 13)
    context, probs = reference.gc_context(feat, weight, bias)
    g = randn(context.shape, torch.float64, "cpu", 14)
    expected = torch.autograd.grad((context * g).sum(), (feat, weight))
    closed = reference.gc_context_backward(g, feat.detach(), weight.detach(), context.detach(), probs.detach())
    torch.testing.assert_close(closed[0], expected[0])
    torch.testing.assert_close(closed[1], expected[1])


def _saturated_weight_grad(feat, weight, g):
    """dw in float64 with sum_j dl_j = 0 built in: dl_j = p_j ((u_j - u_r) - sum_k p_k (u_k - u_r)), r the argmax
    of p, so the largest-p pixel's dl is a sum of small terms instead of a cancelling difference."""
    n, c = feat.shape[:2]
    flat = feat.double().reshape(n, c, -1)
    p = torch.softmax(torch.einsum("ncj,c->nj", flat, weight.double()), dim=1)
    u = torch.einsum("ncj,nc->nj", flat, g)
    centred = u - u.gather(1, p.argmax(dim=1, keepdim=True))
    dl = p * (centred - (p * centred).sum(dim=1, keepdim=True))
    return torch.einsum("ncj,nj->c", flat, dl)


@require_backend("cpu")
@pytest.mark.parametrize("logit_std", [150.0, 300.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weight_gradient_stays_exact_when_the_softmax_saturates(logit_std, dtype):
    """At logit std >= 150 one pixel holds p ~ 1 and p_r (u_r - ubar) cancels: the CPU kernel's dw was 4e-5
    (float64) to 1e4 (float32) relative off, since the true dw is tiny."""
    feat = randn((2, 16, 9, 11), torch.float64, "cpu", 21)
    weight = randn((16,), torch.float64, "cpu", 22)
    weight = weight * logit_std / weight.norm()  # F ~ N(0, 1): logits of std logit_std
    g = randn((2, 16), torch.float64, "cpu", 23)
    feat, weight = feat.to(dtype), weight.to(dtype)  # the expected value sees the same rounded inputs
    expected = _saturated_weight_grad(feat, weight, g)
    w = weight.clone().requires_grad_()
    context = kdops.gc_context(feat, w, torch.zeros(1, dtype=w.dtype), backend="cpu")
    (context.double() * g).sum().backward()
    # float32: logits of |l| ~ 1000 carry ~1e-4 absolute rounding, which exp turns into ~1e-4 relative in p
    rtol = 1e-9 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(w.grad.double(), expected, rtol=0, atol=rtol * expected.abs().max().item())


@pytest.mark.parametrize("backend", on_cpu("cpu", "reference"))
def test_gradcheck_float64(backend):
    feat = randn((2, 3, 4, 5), torch.float64, "cpu", 5, requires_grad=True)
    weight = randn((1, 3, 1, 1), torch.float64, "cpu", 6, requires_grad=True)
    bias = randn((1,), torch.float64, "cpu", 7, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w, b: kdops.gc_context(f, w, b, backend=backend), (feat, weight, bias))


@pytest.mark.parametrize("backend,device", opcheck_params())
def test_opcheck(backend, device):
    op = registered_op("gc_context", backend)
    feat = randn((2, 3, 4, 5), torch.float32, device, 7, requires_grad=True)
    weight = randn((3,), torch.float32, device, 8, requires_grad=True)
    bias = randn((1,), torch.float32, device, 9, requires_grad=True)
    opcheck(op, (feat, weight, bias))


def test_compile_fullgraph():
    def fn(feat, weight, bias):
        return kdops.gc_context(feat, weight, bias).pow(2).sum()

    feat = randn((2, 4, 6, 5), torch.float32, "cpu", 9, requires_grad=True)
    weight, bias = _params(4, "cpu", 10)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(feat, weight, bias)
    grads = torch.autograd.grad(out, (feat, weight))
    torch.testing.assert_close(out, fn(feat, weight, bias))
    for a, b in zip(grads, torch.autograd.grad(fn(feat, weight, bias), (feat, weight))):
        torch.testing.assert_close(a, b)


def test_does_not_write_into_the_inputs():
    feat = randn((2, 3, 4, 5), torch.float32, "cpu", 1, requires_grad=True)
    weight, bias = _params(3, "cpu", 2)
    before = [x.detach().clone() for x in (feat, weight, bias)]
    kdops.gc_context(feat, weight, bias).sum().backward()
    assert all(torch.equal(x.detach(), b) for x, b in zip((feat, weight, bias), before))


@pytest.mark.parametrize("args,error,match", [
    ((torch.randn(3, 4, 5), torch.randn(3), None), ValueError, "feat must be a 4-D"),
    ((torch.randn(2, 3, 4, 5), torch.randn(4), None), ValueError, r"weight must have C = 3 elements"),
    ((torch.randn(2, 3, 4, 5), torch.randn(3, device="meta"), None), ValueError, "weight must be on cpu"),
    ((torch.randn(2, 3, 4, 5), torch.randn(3), torch.randn(2)), ValueError, "bias must have one element"),
    ((torch.randn(2, 3, 4, 5), torch.randn(3).long(), None), TypeError, "weight must be float16"),
    ((torch.randn(2, 0, 4, 5), torch.randn(0), None), ValueError, "C >= 1 and H\\*W >= 1"),
])
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        kdops.gc_context(*args)


@require_backend("cpu")
def test_native_kernel_checks_its_own_arguments():
    with pytest.raises(RuntimeError, match="weight must have shape"):
        torch.ops.kdops.gc_context(torch.randn(2, 3, 4, 5), torch.randn(4), torch.randn(1))
