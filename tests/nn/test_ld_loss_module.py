"""kdops.nn.LDLoss (docs/math.md §11): the functional op on (..., bins) distributions, the official avg_factor, and
the layout its docstring gives for Ultralytics' Detect head."""

import pytest
import torch

import kdops
from kdops.nn import LDLoss


def test_defaults_and_equivalence_with_the_op():
    s, t = torch.randn(2, 30, 4, 16, requires_grad=True), torch.randn(2, 30, 4, 16)
    w = torch.rand(2, 30, 1) * (torch.rand(2, 30, 1) > 0.5)
    module = LDLoss()
    assert (module.temperature, module.normalize, module.loss_weight) == (10.0, "mean", 1.0)
    expected = kdops.ld_loss(s.reshape(-1, 16), t.reshape(-1, 16), weight=w.expand(2, 30, 4).reshape(-1))
    torch.testing.assert_close(module(s, t, w), expected)
    torch.testing.assert_close(LDLoss(normalize="weight", loss_weight=0.5)(s, t, w),
                               0.5 * kdops.ld_loss(s.reshape(-1, 16), t.reshape(-1, 16), normalize="weight",
                                                   weight=w.expand(2, 30, 4).reshape(-1)))
    module(s, t, w).backward()
    assert torch.isfinite(s.grad).all()


def test_avg_factor_is_the_official_division():
    """LDHead's main term: loss_weight 0.25 on sum_i w_i l_i / 4 (and a tensor avg_factor divides the same way)."""
    s, t = torch.randn(40, 17), torch.randn(40, 17)
    w = torch.rand(40)
    total = kdops.ld_loss(s, t, weight=w, normalize="sum")
    torch.testing.assert_close(LDLoss(loss_weight=0.25)(s, t, w, avg_factor=4.0), 0.25 * total / 4)
    torch.testing.assert_close(LDLoss()(s, t, w, avg_factor=torch.tensor(16.0)), total / 16)


def test_teacher_is_detached_and_cast():
    s = torch.randn(5, 17, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 17, requires_grad=True)
    out = LDLoss(temperature=2.0)(s, t)
    torch.testing.assert_close(out, kdops.ld_loss(s, t.detach().double(), temperature=2.0))
    out.backward()
    assert t.grad is None


def test_ultralytics_layout():
    """preds["boxes"] (B, 4 * reg_max, A) viewed as (B, A, 4, reg_max) are the distributions Ultralytics decodes: the
    expectation of each row's softmax is the DFL module's output."""
    pytest.importorskip("ultralytics")
    from ultralytics.nn.modules.block import DFL
    from ultralytics.nn.modules.head import Detect

    head = Detect(nc=3, ch=(8, 16)).train()
    feats = [torch.randn(2, 8, 6, 5), torch.randn(2, 16, 3, 3)]
    preds = head(feats)
    preds = preds.get("one2many", preds)
    boxes = preds["boxes"]
    b, channels, a = boxes.shape
    reg_max = head.reg_max
    assert channels == 4 * reg_max == 64 and a == 6 * 5 + 3 * 3
    dist = boxes.view(b, 4, reg_max, a).permute(0, 3, 1, 2)  # the docstring's layout
    expected = DFL(reg_max)(boxes).permute(0, 2, 1)  # (B, A, 4) expected distances
    torch.testing.assert_close((dist.softmax(-1) * torch.arange(reg_max, dtype=dist.dtype)).sum(-1), expected)
    teacher = dist.detach() + 0.3 * torch.randn_like(dist)
    fg = torch.rand(b, a) > 0.7
    weight = (torch.rand(b, a) * fg)[..., None]
    loss = LDLoss(normalize="weight")(dist, teacher, weight)
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_weight_that_does_not_broadcast_names_the_module():
    s = torch.randn(2, 6, 4, 16)
    with pytest.raises(ValueError, match=r"kdops.nn.LDLoss: weight must broadcast to the edges' shape \(2, 6, 4\)"):
        LDLoss()(s, s, torch.ones(2, 6, 3))
    with pytest.raises(ValueError, match="student_logits and teacher_logits must have the same shape"):
        LDLoss()(s, s[:, :5])
