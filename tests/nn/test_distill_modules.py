"""kdops.nn head and channel distillation modules: paper defaults, equivalence with the functional ops."""

import pytest
import torch

import kdops
from kdops.nn import BoundedRegressionLoss, CWDLoss, DistillBinaryCrossEntropy, DistillCrossEntropy, PKDLoss


def test_distill_cross_entropy_uses_the_paper_background_weight():
    s, t = torch.randn(10, 5, requires_grad=True), torch.randn(10, 5)
    y = torch.tensor([0, 1, 2, 3, 4, -1, 0, 0, 1, 2])
    module = DistillCrossEntropy()
    assert (module.background_weight, module.temperature, module.mu) == (1.5, 1.0, 0.5)
    w = torch.tensor([1.5, 1, 1, 1, 1])
    torch.testing.assert_close(module(s, t, y), kdops.soft_cross_entropy(s, t, class_weight=w, target=y, mu=0.5))
    torch.testing.assert_close(module(s, t), kdops.soft_cross_entropy(s, t, class_weight=w))
    module(s, t, y).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_distill_cross_entropy_follows_a_changed_background_weight():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    module = DistillCrossEntropy()
    module(s, t)  # builds and caches the weight vector with w_0 = 1.5
    module.background_weight = 3.0
    torch.testing.assert_close(module(s, t), kdops.soft_cross_entropy(s, t, class_weight=torch.tensor([3.0, 1, 1, 1])))
    assert "background_weight=3.0" in repr(module)


def test_distill_cross_entropy_with_explicit_weights_and_teacher_needing_grad():
    w = torch.rand(4) + 0.5
    s, t = torch.randn(3, 4), torch.randn(3, 4, requires_grad=True)  # the module detaches the teacher
    torch.testing.assert_close(DistillCrossEntropy(class_weight=w, temperature=2.0)(s, t),
                               kdops.soft_cross_entropy(s, t.detach(), class_weight=w, temperature=2.0))


def test_distill_binary_cross_entropy_defaults():
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    y = torch.randint(-1, 2, (2, 3, 4, 5))
    module = DistillBinaryCrossEntropy()
    assert (module.pos_weight, module.neg_weight, module.temperature) == (1.0, 1.5, 1.0)
    torch.testing.assert_close(module(s, t, y), kdops.soft_binary_cross_entropy(s, t, target=y, pos_weight=1.0,
                                                                                neg_weight=1.5, mu=0.5))


def test_bounded_regression_loss_paper_form():
    s, t, y = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4), torch.randn(8, 4)
    w = (torch.arange(8) % 2).float()
    module = BoundedRegressionLoss()
    assert (module.nu, module.margin) == (0.5, 0.0)
    torch.testing.assert_close(module(s, t, y, w), 0.5 * kdops.bounded_regression(s, t, target=y, weight=w))
    full = BoundedRegressionLoss(with_smooth_l1=True)(s, t, y, w)
    smooth = (torch.nn.functional.smooth_l1_loss(s, y, reduction="none").sum(1) * w).sum() / 4
    torch.testing.assert_close(full, smooth + 0.5 * kdops.bounded_regression(s, t, target=y, weight=w))
    full.backward()
    assert torch.isfinite(s.grad).all()


def test_channel_modules():
    s, t = torch.randn(2, 6, 5, 7, requires_grad=True), torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(CWDLoss(tau=2.0, loss_weight=3.0)(s, t), 3.0 * kdops.cwd_loss(s, t, tau=2.0))
    torch.testing.assert_close(PKDLoss()(s, t), kdops.pkd_loss(s, t))
    small = torch.randn(2, 6, 3, 4, requires_grad=True)
    resized = torch.nn.functional.interpolate(small, size=(5, 7), mode="bilinear")
    torch.testing.assert_close(PKDLoss()(small, t), kdops.pkd_loss(resized, t))
    PKDLoss(resize_student=False)(small, t).backward()
    assert small.grad is not None


@pytest.mark.parametrize("module", [DistillCrossEntropy(), BoundedRegressionLoss(), CWDLoss(), PKDLoss()])
def test_repr_names_the_settings(module):
    assert "=" in repr(module)


@pytest.mark.parametrize("weight", [None, torch.ones(0)], ids=["no_weight", "weight"])
def test_bounded_regression_module_on_zero_rows_is_zero(weight):
    """0 rows: 0 with or without weights, with the smooth-L1 term too (was: NaN without a weight, mean() of 0 rows)."""
    s = torch.zeros(0, 4, requires_grad=True)
    loss = BoundedRegressionLoss(with_smooth_l1=True)(s, torch.zeros(0, 4), torch.zeros(0, 4), weight)
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad.shape == (0, 4)
