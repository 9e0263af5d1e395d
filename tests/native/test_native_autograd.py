"""The native ops' autograd is C++ (csrc/autograd/): no Python runs in an eager fwd + bwd.

The gradients themselves are checked per op (tests/ops/test_<op>.py); this file checks what is specific
to the C++ registration: the node type, the errors of direct torch.ops calls, unused outputs.
"""

import pytest
import torch

from support.backends import require_backend

pytestmark = require_backend("cpu")  # the native ops


def _feat(seed, shape=(2, 3, 4, 5), requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).requires_grad_(requires_grad)


def _calls(teacher_grad=False):
    """name -> thunk calling torch.ops.kdops.<name> directly with a student that requires grad."""
    s = _feat(0, requires_grad=True)
    t = _feat(1, requires_grad=teacher_grad)
    rows_s = _feat(2, (6, 7), requires_grad=True)
    rows_t = _feat(3, (6, 7), requires_grad=teacher_grad)
    reg_t = _feat(4, (6, 4), requires_grad=teacher_grad)
    fg = torch.zeros(2, 4, 5)
    bg = torch.full((2, 4, 5), 1.0 / 20)
    ops = torch.ops.kdops
    return {
        "attention_masks": lambda: ops.attention_masks(s, 0.5),
        "feature_imitation": lambda: ops.feature_imitation(s, t, None, 0, 0),
        "fgd_focal_loss": lambda: ops.fgd_focal_loss(s, t, fg, bg, 0.5, 1.0, 1.0, 1.0),
        "gc_context": lambda: ops.gc_context(s, _feat(5, (3,), requires_grad=True), torch.zeros(1)),
        "fgd_feature_pass": lambda: ops.fgd_feature_pass(s, t, fg, bg, _feat(5, (3,), requires_grad=True),
                                                         torch.zeros(1), _feat(8, (3,)), torch.zeros(1), 0.5, 1.0,
                                                         1.0, 1.0),
        "relation_mse": lambda: ops.relation_mse(s, t, torch.zeros(2, 3), torch.zeros(2, 3)),
        "cwd_loss": lambda: ops.cwd_loss(s, t, 1.0),
        "pkd_loss": lambda: ops.pkd_loss(s, t),
        "soft_cross_entropy": lambda: ops.soft_cross_entropy(rows_s, rows_t, None, None, 1.0, 0.0, -1),
        "soft_binary_cross_entropy": lambda: ops.soft_binary_cross_entropy(
            rows_s[:, 0], rows_t[:, 0], None, 1.0, 1.5, 1.0, 0.0, -1),
        "ld_loss": lambda: ops.ld_loss(rows_s, rows_t, None, 10.0, "mean"),
        "quality_focal_kd": lambda: ops.quality_focal_kd(rows_s, rows_t, None, 1.0, "mean"),
        "bounded_regression": lambda: ops.bounded_regression(_feat(6, (6, 4), requires_grad=True), reg_t,
                                                             _feat(7, (6, 4)), None, 0.0),
    }


@pytest.mark.parametrize("name", sorted(_calls()))
def test_the_autograd_node_is_cpp(name):
    out = _calls()[name]()[0]
    assert out.requires_grad
    assert "CppNode" in out.grad_fn.name(), out.grad_fn.name()
    out.sum().backward()


@pytest.mark.parametrize("name,arg", [("fgd_focal_loss", "teacher"), ("fgd_feature_pass", "teacher"), ("cwd_loss", "teacher"),
                                      ("soft_cross_entropy", "teacher_logits"), ("ld_loss", "teacher_logits"),
                                      ("quality_focal_kd", "teacher_logits"),
                                      ("soft_binary_cross_entropy", "teacher_logits")])
def test_direct_call_with_a_teacher_that_requires_grad_names_it(name, arg):
    out = _calls(teacher_grad=True)[name]()[0]
    with pytest.raises(RuntimeError, match=f"{arg}.*detach"):
        out.backward()


def test_bounded_regression_target_that_requires_grad_is_named():
    out = torch.ops.kdops.bounded_regression(_feat(0, (6, 4), requires_grad=True), _feat(1, (6, 4)),
                                             _feat(2, (6, 4), requires_grad=True), None, 0.0)[0]
    with pytest.raises(RuntimeError, match="target gets no gradient.*detach"):
        out.backward()


def test_gc_context_bias_gradient_is_zero_and_weight_gradient_flows():
    feat = _feat(0, requires_grad=True)
    weight = _feat(1, (3,), requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    context, probs = torch.ops.kdops.gc_context(feat, weight, bias)
    assert not probs.requires_grad  # the softmax weights are a by-product, not differentiable
    (context * _feat(2, (2, 3))).sum().backward()
    assert torch.equal(bias.grad, torch.zeros(1))
    assert weight.grad.abs().sum() > 0 and feat.grad.abs().sum() > 0


def test_attention_masks_unused_output_gets_a_zero_gradient():
    feat = _feat(0, requires_grad=True)
    spatial, channel = torch.ops.kdops.attention_masks(feat, 0.5)
    (spatial * _feat(1, (2, 4, 5))).sum().backward()
    only_spatial = feat.grad.clone()
    feat.grad = None
    spatial, channel = torch.ops.kdops.attention_masks(feat, 0.5)
    ((spatial * _feat(1, (2, 4, 5))).sum() + 0 * channel.sum()).backward()
    torch.testing.assert_close(feat.grad, only_spatial)
