"""An empty batch (N = 0, docs/math.md §0): a zero loss connected to the graph (backward gives zero gradients of
the inputs' shapes) and empty (0, H, W) masks, on every backend that runs here."""

import pytest
import torch

import kdops
from kdops.nn import FGDLoss
from support.backends import backends_on_cpu

BACKENDS = backends_on_cpu()


def _zero_loss_with_zero_grads(loss, *inputs):
    assert loss.shape == () and loss.item() == 0.0
    assert loss.grad_fn is not None, "an N = 0 loss must stay connected to the graph"
    grads = torch.autograd.grad(loss, inputs)
    for x, g in zip(inputs, grads):
        assert g.shape == x.shape and not g.any()


def test_box_masks_of_no_image_are_empty():
    fg, bg = kdops.box_masks([], (5, 7))
    assert fg.shape == bg.shape == (0, 5, 7) and fg.dtype == bg.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_fgd_focal_loss(backend):
    s, t = torch.randn(0, 3, 5, 7, requires_grad=True), torch.randn(0, 3, 5, 7)
    fg, bg = kdops.box_masks([], (5, 7))
    loss, terms = kdops.fgd_focal_loss(s, t, fg=fg, bg=bg, return_terms=True, backend=backend)
    assert terms.shape == (3,) and not terms.any()
    _zero_loss_with_zero_grads(loss, s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fgd_feature_pass(backend):
    s, t = torch.randn(0, 3, 5, 7, requires_grad=True), torch.randn(0, 3, 5, 7)
    fg, bg = kdops.box_masks([], (5, 7))
    w_s, w_t = torch.randn(1, 3, 1, 1, requires_grad=True), torch.randn(1, 3, 1, 1)
    out = kdops.fgd_feature_pass(s, t, fg=fg, bg=bg, student_gc_weight=w_s, teacher_gc_weight=w_t, backend=backend)
    assert out.ctx_s.shape == (0, 3) and out.diff_sum.shape == (0, 3)
    assert out.loss.item() == 0.0 and out.diff_sq.item() == 0.0
    _zero_loss_with_zero_grads(out.loss + out.ctx_s.sum() + out.diff_sq + out.diff_sum.sum(), s, w_s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fgd_loss_module(backend):
    torch.manual_seed(0)
    module = FGDLoss(3, 3, backend=backend)
    s, t = torch.randn(0, 3, 5, 7, requires_grad=True), torch.randn(0, 3, 5, 7)
    loss = module(s, t, [])
    _zero_loss_with_zero_grads(loss, s, module.student_gc.conv_mask.weight)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5)])
def test_pkd_loss(backend, shape):
    s, t = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    _zero_loss_with_zero_grads(kdops.pkd_loss(s, t, backend=backend), s, t)
