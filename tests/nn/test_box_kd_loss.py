"""kdops.nn.BoxKDLoss and kdops.nn.box_kd_weights (docs/math.md §12.1): the official box term of BCKD and CrossKD
(mmdet's GIoU and IoU losses between decoded boxes, weighted per anchor), rows of weight 0, bad input."""

import pytest
import torch

from kdops.nn import BoxKDLoss, box_kd_weights

torchvision_ops = pytest.importorskip("torchvision.ops")


def _boxes(rows, seed, scale=50.0):
    g = torch.Generator().manual_seed(seed)
    xy = scale * torch.rand(rows, 2, generator=g, dtype=torch.float64)
    wh = scale * (0.1 + torch.rand(rows, 2, generator=g, dtype=torch.float64))
    return torch.cat([xy, xy + wh], dim=1)


def _pair(rows=40, seed=0):
    student = _boxes(rows, seed)
    teacher = student + 8 * torch.randn(rows, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    teacher[:, 2:] = torch.maximum(teacher[:, 2:], teacher[:, :2] + 1)
    return student.requires_grad_(), teacher


def _mmdet_iou(student, teacher, eps=1e-6):
    """mmdet's bbox_overlaps(is_aligned=True) written out."""
    lt, rb = torch.maximum(student[:, :2], teacher[:, :2]), torch.minimum(student[:, 2:], teacher[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    return inter / (area(student) + area(teacher) - inter).clamp(min=eps)


def test_giou_is_torchvisions_and_iou_is_mmdets():
    student, teacher = _pair()
    per_row = BoxKDLoss(normalize="sum")(student, teacher) / 1.0
    expected = torchvision_ops.generalized_box_iou_loss(student, teacher, reduction="sum")
    torch.testing.assert_close(per_row, expected, rtol=1e-6, atol=1e-6)
    iou = BoxKDLoss(kind="iou", normalize="sum")(student, teacher)
    torch.testing.assert_close(iou, -_mmdet_iou(student, teacher).clamp(min=1e-6).log().sum())


def test_identical_boxes_cost_nothing_and_disjoint_ones_more_than_one():
    b = _boxes(5, 3)
    assert BoxKDLoss(normalize="sum")(b, b.clone()).abs().item() < 1e-12
    far = b + 1000.0
    assert (BoxKDLoss(normalize="sum")(b, far) > 5.0).item()  # GIoU < 0 for disjoint boxes


@pytest.mark.parametrize("kind", ["giou", "iou"])
def test_weights_avg_factor_and_normalisers(kind):
    student, teacher = _pair()
    weight = torch.linspace(0, 1, 40, dtype=torch.float64)
    per_row = BoxKDLoss(kind=kind, normalize="sum")
    rows = torch.stack([per_row(student[i:i + 1], teacher[i:i + 1]) for i in range(40)])
    total = (weight * rows).sum()
    torch.testing.assert_close(BoxKDLoss(kind=kind, loss_weight=4.0)(student, teacher, weight, avg_factor=3),
                               4.0 * total / 3)
    torch.testing.assert_close(BoxKDLoss(kind=kind)(student, teacher, weight), total / 40)
    torch.testing.assert_close(BoxKDLoss(kind=kind, normalize="weight")(student, teacher, weight), total / weight.sum())
    torch.testing.assert_close(BoxKDLoss(kind=kind, normalize="weight")(student, teacher), rows.mean())


def test_the_teacher_gets_no_gradient():
    student, teacher = _pair()
    teacher.requires_grad_()
    BoxKDLoss()(student, teacher).backward()
    assert teacher.grad is None and torch.isfinite(student.grad).all() and student.grad.any()


def test_half_boxes_in_pixels_do_not_overflow():
    """float16 areas of 800x1333-image boxes pass 65504: the loss is computed in float32."""
    student, teacher = _pair()
    big = BoxKDLoss()(20 * student.detach().half(), 20 * teacher.half())
    assert big.dtype == torch.float32 and torch.isfinite(big)
    torch.testing.assert_close(big, BoxKDLoss()(20 * student.detach().half().float(), 20 * teacher.half().float()))


@pytest.mark.parametrize("kind", ["giou", "iou"])
def test_rows_of_weight_zero_change_nothing(kind):
    student, teacher = _pair(12, 4)
    weight = torch.tensor([0.0, 1.0, 0.5] * 4, dtype=torch.float64)
    zero = (weight == 0)[:, None]

    def run(s, t):
        s = s.detach().clone().requires_grad_()
        out = BoxKDLoss(kind=kind, normalize="weight")(s, t, weight)
        return out.detach(), torch.autograd.grad(out, s)[0]

    expected = run(student, teacher)
    for value in (float("nan"), float("inf"), float("-inf")):
        for poisoned in ((torch.where(zero, value, student), teacher), (student, torch.where(zero, value, teacher))):
            for a, e in zip(run(*poisoned), expected):
                assert torch.equal(a, e), (kind, value)


def test_box_kd_weights_follow_the_official_rules():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 10, 4, generator=g), torch.randn(2, 10, 4, generator=g)
    torch.testing.assert_close(box_kd_weights(s, t), t.max(dim=-1).values.sigmoid())  # CrossKD
    gap = (t.sigmoid() - s.sigmoid()).abs().max(dim=-1).values  # BCKD
    label_weights = (torch.arange(20).reshape(2, 10) % 3 != 0).float()
    torch.testing.assert_close(box_kd_weights(s, t, rule="score_gap", weight=label_weights), gap * label_weights)
    t_nan = torch.where(label_weights[..., None] == 0, float("nan"), t)
    r = box_kd_weights(s.requires_grad_(), t_nan, weight=label_weights)
    assert not r.requires_grad and torch.isfinite(r).all() and (r[label_weights == 0] == 0).all()


B = torch.rand(6, 4)


@pytest.mark.parametrize("kwargs,inputs,error,match", [
    ({"kind": "diou"}, (B, B), ValueError, r"BoxKDLoss: kind must be one of \('giou', 'iou'\)"),
    ({"normalize": "batch"}, (B, B), ValueError, "BoxKDLoss: normalize must be one of"),
    ({"eps": 0.0}, (B, B), ValueError, "BoxKDLoss: eps must be a number > 0"),
    ({}, (torch.rand(6, 5), torch.rand(6, 5)), ValueError, r"student_boxes must be \(..., 4\) xyxy boxes"),
    ({}, (B, torch.rand(5, 4)), ValueError, "student_boxes and teacher_boxes must have the same shape"),
    ({}, (B.long(), B.long()), TypeError, "student_boxes must be float16"),
    ({}, (B, B, torch.ones(5)), ValueError, r"weight must have the rows' shape \(6,\)"),
    ({}, (B, B, torch.ones(6, requires_grad=True)), ValueError, "weight must not require grad"),
    ({}, (B, B, None, 0), ValueError, "avg_factor must be a number > 0"),
])
def test_bad_input(kwargs, inputs, error, match):
    with pytest.raises(error, match=match):
        BoxKDLoss(**kwargs)(*inputs)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"rule": "max"}, ValueError, r"box_kd_weights: rule must be one of \('teacher_score', 'score_gap'\)"),
    ({"weight": torch.ones(3)}, ValueError, r"weight must have the rows' shape \(6,\)"),
])
def test_bad_box_kd_weights(kwargs, error, match):
    with pytest.raises(error, match=match):
        box_kd_weights(torch.randn(6, 3), torch.randn(6, 3), **kwargs)
