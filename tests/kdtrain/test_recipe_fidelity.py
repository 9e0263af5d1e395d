"""Each recipe's reductions against its paper and official code (docs/recipes.md), on hand-built contexts.

FGD, CWD and PKD: one loss per paired level, summed (the official configs name one loss per FPN level
and mmdet adds them up). Imitation: the mean over levels (Chen 2017 has one hint layer). Chen 2017's
bounded regression: summed over the positive rows and divided by all sampled rows (eq. 1).
"""

import pytest
import torch
from torch.nn import functional as F

from kdtrain.visualize import boxes_on_level
from kdtrain.distill.context import DistillContext, RoiOutputs, RpnPair
from kdops.nn.pairing import Level
from kdtrain.distill.levels import LevelPair
from kdtrain.distill.terms import ChenRcnTerm, ChenRpnTerm, CWDTerm, FGDTerm, ImitationTerm, PKDTerm

from support.official_fgd import official_from  # the port of FGD's official FeatureLoss

PADDED = 64  # the padded batch, in pixels
STRIDES = (4, 8, 16, 32, 64)  # a five-level FPN: maps of 16, 8, 4, 2 and 1 cells


def _context(s_channels, t_channels, seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = [LevelPair(f"p{i}", f"p{i}", s) for i, s in enumerate(STRIDES)]

    def feats(channels):
        return {p.student: torch.randn(2, channels, PADDED // p.stride, PADDED // p.stride, generator=g,
                                       dtype=torch.float64) * 3 for p in pairs}

    targets = [  # image pixels of the padded batch
        {"boxes": torch.tensor([[9.0, 13.0, 30.0, 27.0],      # inside every map
                                [0.0, 0.0, 12.0, 20.0],       # touching the top-left border
                                [40.0, 50.0, 64.0, 64.0]],    # touching the bottom-right border
                               dtype=torch.float64)},
        {"boxes": torch.tensor([[-6.0, 30.0, 20.0, 41.0],     # crossing the left border
                                [52.0, -3.0, 75.0, 10.0]],    # crossing the top and right borders
                               dtype=torch.float64)},
    ]
    return DistillContext(feats(s_channels), feats(t_channels), pairs, targets), pairs


def _levels(pairs, channels, side="student"):
    return {getattr(p, side): Level(channels, p.stride) for p in pairs}


def _names(pairs):
    """The (student level, teacher level) of each pair, as the Distiller hands them to a feature term."""
    return [(p.student, p.teacher) for p in pairs]


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero GcBlock last convs, so the global loss is not plain MSE
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("family", ["two_stage", "retinanet", "fcos"])
@pytest.mark.parametrize("channels", [(6, 6), (4, 6)])
def test_fgd_total_is_the_sum_of_the_official_per_level_losses(family, channels):
    ctx, pairs = _context(*channels)
    term = FGDTerm(_levels(pairs, channels[0]), _levels(pairs, channels[1], "teacher"), _names(pairs),
                   family=family).double()
    _randomise(term, 1)
    total = term(ctx)["fgd"]
    official = [official_from(term.distiller.losses[i])(
        ctx.student_features[p.student], ctx.teacher_features[p.teacher], boxes_on_level(ctx.targets, p.stride))
        for i, p in enumerate(pairs)]
    expected = sum(official)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(total, expected / len(pairs))  # not the mean over levels
    # The logged parts are summed over levels too and add up to the term.
    torch.testing.assert_close(sum(term.last_terms.values()), total.detach(), rtol=1e-10, atol=0)


def _mmrazor_cwd(s, t, tau):
    """mmrazor's ChannelWiseDivergence.forward (loss_weight 1)."""
    n, c, h, w = s.shape
    p_t = F.softmax(t.reshape(-1, h * w) / tau, dim=1)
    kl = torch.sum(p_t * F.log_softmax(t.reshape(-1, h * w) / tau, dim=1)
                   - p_t * F.log_softmax(s.reshape(-1, h * w) / tau, dim=1)) * tau ** 2
    return kl / (c * n)


def _mmrazor_pkd(s, t):
    """mmrazor's PKDLoss.forward on one level (loss_weight 1)."""
    def norm(f):
        f = f.transpose(0, 1).reshape(f.shape[1], -1)
        return (f - f.mean(-1, keepdim=True)) / (f.std(-1, keepdim=True) + 1e-6)

    return F.mse_loss(norm(s), norm(t)) / 2


@pytest.mark.parametrize("name", ["cwd", "pkd"])
def test_cwd_and_pkd_sum_the_official_per_level_losses_without_an_adapter_at_equal_widths(name):
    ctx, pairs = _context(6, 6)
    make = CWDTerm if name == "cwd" else PKDTerm
    levels = [p for p in pairs if PADDED // p.stride > 1]  # PKD's unbiased std needs 2+ values per channel
    term = make(_levels(levels, 6), _levels(levels, 6, "teacher"), _names(levels)).double()
    assert not list(term.parameters())  # mmrazor's configs distil equal-width FPNs as they are
    ref = (lambda s, t: _mmrazor_cwd(s, t, 1.0)) if name == "cwd" else _mmrazor_pkd
    expected = sum(ref(ctx.student_features[p.student], ctx.teacher_features[p.teacher]) for p in levels)
    torch.testing.assert_close(term(ctx)[name], expected, rtol=1e-9, atol=0)
    # Different widths: a 1x1 adaptation conv per level maps the student to the teacher's channels.
    narrow = make(_levels(pairs, 4), _levels(pairs, 6, "teacher"), _names(pairs))
    assert [tuple(a.weight.shape) for a in narrow.distiller.adapt] == [(6, 4, 1, 1)] * len(pairs)


def test_imitation_averages_the_hint_loss_over_levels():
    ctx, pairs = _context(4, 6)
    term = ImitationTerm(_levels(pairs, 4), _levels(pairs, 6, "teacher"), _names(pairs)).double()
    per_level = [term.distiller.losses[i](ctx.student_features[p.student], ctx.teacher_features[p.teacher])
                 for i, p in enumerate(pairs)]
    torch.testing.assert_close(term(ctx)["imitation"], sum(per_level) / len(pairs))


def _bounded_reference(s, t, y, positive, margin=0.0):
    """Chen 2017 eq. 1 and 4: (1/N) Σ_positive [e_s + m > e_t] e_s over the N sampled rows."""
    e_s, e_t = ((s - y) ** 2).sum(-1), ((t - y) ** 2).sum(-1)
    return (positive * (e_s + margin > e_t) * e_s).sum() / len(positive)


def _rows(rows, width, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, width, generator=g, dtype=torch.float64) for _ in range(3)]


def test_chen_rcn_bounded_regression_is_averaged_over_all_sampled_proposals():
    labels = torch.tensor([0, 2, 1, 0, 0, 2, 0, 0])
    s_reg, t_reg, _ = _rows(len(labels), 3 * 4, 0)  # 3 classes with background, 4 deltas each
    targets = _rows(len(labels), 4, 1)[0]
    logits = _rows(len(labels), 3, 2)
    t_reg.view(len(labels), 3, 4)[1, 2] = targets[1]        # the teacher is exact: the bound is active
    t_reg.view(len(labels), 3, 4)[2, 1] = targets[2] + 10   # the student beats the teacher: inactive
    s_reg.requires_grad_()
    ctx = DistillContext({}, {}, [], [], roi=RoiOutputs(logits[0], logits[1], s_reg, t_reg, labels, targets))
    out = ChenRcnTerm()(ctx)
    rows = torch.arange(len(labels))
    pick = lambda reg: reg.reshape(len(labels), 3, 4)[rows, labels]  # noqa: E731  (the GT class's deltas)
    expected = _bounded_reference(pick(s_reg), pick(t_reg), targets, (labels > 0).double())
    assert expected > 0
    torch.testing.assert_close(out["chen_rcn_reg"], expected)
    out["chen_rcn_reg"].backward()
    assert torch.count_nonzero(s_reg.grad.reshape(len(labels), 3, 4)[labels == 0]) == 0  # negatives: no gradient

    none_positive = DistillContext({}, {}, [], [], roi=RoiOutputs(logits[0], logits[1], s_reg, t_reg,
                                                                   torch.zeros_like(labels), targets))
    assert ChenRcnTerm()(none_positive)["chen_rcn_reg"] == 0


def test_chen_rpn_distils_objectness_and_bounded_regression_on_the_sampled_anchors():
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    s_deltas, t_deltas, targets = _rows(len(labels), 4, 3)
    s_logits, t_logits = _rows(len(labels), 1, 4)[:2]
    ctx = DistillContext({}, {}, [], [], rpn=RpnPair(s_logits[:, 0], t_logits[:, 0], s_deltas, t_deltas,
                                                     targets, labels))
    out = ChenRpnTerm()(ctx)
    assert set(out) == {"chen_rpn_cls", "chen_rpn_reg"}
    torch.testing.assert_close(out["chen_rpn_reg"], _bounded_reference(s_deltas, t_deltas, targets, labels))
    assert ChenRpnTerm()(DistillContext({}, {}, [], [])) == {}  # anchor layouts differ: no RPN distillation


def test_chen2017_adds_the_rpn_bounded_regression_when_anchor_layouts_match(tiny_data):
    from kdtrain.data.coco import CocoDetection, collate
    from kdtrain.distill.distiller import Distiller
    from kdtrain.models import build_detector
    from kdtrain_testutil import tiny_spec

    ds = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"], train=False)
    images, targets = collate([ds[0], ds[1]])
    torch.manual_seed(0)
    student = build_detector(tiny_spec("fasterrcnn_resnet18_fpn"))
    teacher = build_detector(tiny_spec("fasterrcnn_resnet34_fpn"))
    d = Distiller(student, teacher, "chen2017", log=lambda *a: None).train()
    losses = d(list(images), list(targets), 0)
    assert d.weights["chen_rpn_reg"] == 0.5  # nu, as on the RCN
    assert torch.isfinite(losses["distill_chen_rpn_reg"])
    torch.testing.assert_close(losses["distill_chen_rpn_reg"], d.raw["chen_rpn_reg"] * 0.5)
