"""kdtrain's feature recipes, wired through kdops.nn.FeatureDistiller, give the numbers of the wiring
they replaced: the same pairs, the same initial adaptation layers and GcBlocks for a seed, the same
losses and gradients, and the old checkpoints' adaptation layers load (docs/recipes.md).

The reference below is that former wiring: pairs by stride in teacher pixels with the first teacher
level of a stride, one kdops.nn module per pair in a ModuleDict keyed s<student>_t<teacher> (CWD and
PKD: {adapt, loss}), the student resized to the teacher before every loss but PKD's, boxes divided by
the stride, imitation averaged over pairs and the other terms summed.
"""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import kdops
from kdops.nn import CWDLoss, FGDLoss, HintLoss, PKDLoss
from kdtrain.distill.distiller import Distiller
from kdtrain.distill.probe import probe_levels
from kdtrain.distill.terms import fgd_preset
from kdtrain.models import ModelSpec, build_detector, detector_family, input_side

from kdtrain_testutil import SIZE, STUDENT, TEACHER, tiny_spec

SSD = "ssdlite320_mobilenet_v3_large"


def old_pairs(s_strides, t_strides, scale):
    by_stride = {}
    for name, stride in t_strides.items():
        by_stride.setdefault(stride, name)
    pairs = []
    for name, stride in s_strides.items():
        image_stride = 2 ** int(round(math.log2(stride / scale)))
        if image_stride in by_stride:
            pairs.append((name, by_stride[image_stride], image_stride))
    return pairs


class OldAdapted(nn.Module):
    def __init__(self, loss, s_channels, t_channels):
        super().__init__()
        self.adapt = nn.Conv2d(s_channels, t_channels, kernel_size=1) if s_channels != t_channels else None
        self.loss = loss

    def forward(self, student, teacher):
        return self.loss(student if self.adapt is None else self.adapt(student), teacher)


class OldTerm(nn.Module):
    def __init__(self, name, pairs, s_channels, t_channels, family, mask):
        super().__init__()
        self.name, self.pairs, self.mask = name, pairs, mask

        def make(s, t):
            if name == "imitation":
                return HintLoss(s, t, loss="mse", normalize="mean", adapt=True)
            if name == "fgd":
                return FGDLoss.preset(fgd_preset(family), s, t)
            return OldAdapted(CWDLoss(tau=1.0) if name == "cwd" else PKDLoss(), s, t)

        self.per_pair = nn.ModuleDict({f"s{s}_t{t}": make(s_channels[s], t_channels[t]) for s, t, _ in pairs})

    def forward(self, ctx):
        total, parts = 0, {}
        for s_name, t_name, stride in self.pairs:
            module = self.per_pair[f"s{s_name}_t{t_name}"]
            s, t = ctx.student_features[s_name], ctx.teacher_features[t_name]
            boxes = [target["boxes"] / float(stride) for target in ctx.targets]
            if self.name != "pkd" and s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            if self.name == "imitation":
                mask = None
                if self.mask == "boxes":
                    fg, _ = kdops.box_masks(boxes, tuple(t.shape[-2:]))
                    mask = (fg > 0).to(t.dtype)
                value = module(s, t, mask=mask)
            elif self.name == "fgd":
                value = module(s, t, boxes)
                for k, v in module.last_terms.items():
                    parts[f"fgd_{k}"] = parts.get(f"fgd_{k}", 0) + v
            else:
                value = module(s, t)
            total = total + value
        return (total / len(self.pairs) if self.name == "imitation" else total), parts


CASES = {  # student spec, teacher spec, Distiller kwargs
    "same-family, two student levels on one teacher level": (tiny_spec(STUDENT), tiny_spec(TEACHER), {}),
    "same-family, a stride tie on both sides": (tiny_spec(STUDENT), tiny_spec(STUDENT), {}),
    "low-resolution student": (tiny_spec(TEACHER), tiny_spec(TEACHER), {"student_scale": 0.5}),
    "cross-family RetinaNet": (ModelSpec("retinanet_resnet50_fpn", 6, min_size=SIZE, max_size=SIZE),
                               tiny_spec(TEACHER), {}),
    "cross-family FCOS": (ModelSpec("fcos_resnet50_fpn", 6, min_size=SIZE, max_size=SIZE), tiny_spec(TEACHER), {}),
    "SSDlite student": (ModelSpec(SSD, 6, min_size=2 * SIZE), tiny_spec(TEACHER), {}),
    # 96 px against 64: stride 16 covers 10.7 teacher pixels, paired at 8, so 6x6 student maps meet 8x8 ones.
    "SSDlite student, resized maps": (ModelSpec(SSD, 6, min_size=96), tiny_spec(TEACHER), {}),
    "SSDlite teacher": (tiny_spec(TEACHER), ModelSpec(SSD, 6, min_size=2 * SIZE), {}),
}


def _batch():
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 48, 64, generator=g), torch.rand(3, 64, 56, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 1.0, 63.0, 30.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 2.0, 50.0, 20.0]]), "labels": torch.tensor([2])}]
    return images, targets


def _grads(value, params):
    return torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)


def _same(new, old, what):
    if new is None or old is None:
        assert new is None and old is None, what
    else:
        torch.testing.assert_close(new, old, rtol=1e-6, atol=0, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("recipe,mask", [("imitation,fgd,cwd,pkd", "none"), ("imitation", "boxes")])
def test_feature_recipes_equal_the_former_wiring(case, recipe, mask):
    s_spec, t_spec, kwargs = CASES[case]
    torch.manual_seed(1)
    teacher = build_detector(t_spec).eval()
    torch.manual_seed(2)
    student = build_detector(s_spec)
    torch.manual_seed(4)
    d = Distiller(student, teacher, recipe, imitation_mask=mask, log=lambda *a: None, **kwargs).train()

    # The reference, built from the same seed: its modules must draw the same initial weights.
    s_channels, s_strides = probe_levels(student.backbone)
    t_channels, t_strides = probe_levels(teacher.backbone)
    scale = kwargs.get("student_scale", 1.0)
    if scale == 1.0 and d.teacher_own_input:
        scale = input_side(student) / input_side(teacher)
    pairs = old_pairs(s_strides, t_strides, scale)
    assert [(p.student, p.teacher, p.stride) for p in d.pairs] == pairs
    torch.manual_seed(4)
    old = nn.ModuleDict({name: OldTerm(name, pairs, s_channels, t_channels, detector_family(student), mask)
                         for name in d.terms})
    for name, term in d.terms.items():
        assert [(p.student, p.teacher, p.stride) for p in term.pairs] == pairs
        new_params, old_params = list(term.parameters()), list(old[name].parameters())
        assert len(new_params) == len(old_params), name
        for i, (p, q) in enumerate(zip(new_params, old_params)):  # same order: optimizer states carry over
            assert torch.equal(p, q), (name, i)

    d.profile = True  # keeps the step's context (the maps both wirings read)
    losses = d(*_batch())
    ctx = d.last_context
    s_params = [p for p in student.parameters() if p.requires_grad]
    assert all(f.requires_grad for f in ctx.student_features.values())
    for name, term in d.terms.items():
        new_value = losses[f"distill_{name}"]
        old_value, old_parts = old[name](ctx)
        _same(new_value, old_value, f"{case} {name}")
        assert torch.isfinite(new_value) and new_value > 0
        if name == "fgd":
            assert set(term.last_terms) == set(old_parts)
            for k in old_parts:
                _same(term.last_terms[k], old_parts[k].detach(), f"{case} {k}")
        new_grads = _grads(new_value, s_params + list(term.parameters()))
        old_grads = _grads(old_value, s_params + list(old[name].parameters()))
        assert any(g is not None and g.abs().sum() > 0 for g in new_grads[:len(s_params)]), name
        for i, (g, h) in enumerate(zip(new_grads, old_grads)):
            _same(g, h, f"{case} {name} gradient {i}")


def test_old_checkpoints_adaptation_layers_load():
    """A state dict of the former layout (per_pair.s<student>_t<teacher>...) loads into every feature
    term, each tensor in the place of its pair, and loads strictly (no key left over or missing)."""
    torch.manual_seed(1)
    teacher = build_detector(ModelSpec(SSD, 6, min_size=2 * SIZE)).eval()
    student = build_detector(tiny_spec(TEACHER))  # 256-wide FPN, SSD levels of 672..128: every pair adapts
    d = Distiller(student, teacher, "imitation,fgd,cwd,pkd", log=lambda *a: None)
    s_channels, s_strides = probe_levels(student.backbone)
    t_channels, t_strides = probe_levels(teacher.backbone)
    pairs = old_pairs(s_strides, t_strides, input_side(student) / input_side(teacher))
    old = nn.ModuleDict({name: OldTerm(name, pairs, s_channels, t_channels, "two_stage", "none") for name in d.terms})
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in old.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    state = old.state_dict()
    assert any(".per_pair.s1_t0.adapt.weight" in k for k in state)  # the old layout, e.g. CWD's adapt conv
    d.terms.load_state_dict(state)
    for name in d.terms:
        for p, q in zip(d.terms[name].parameters(), old[name].parameters(), strict=True):
            assert torch.equal(p, q), name
    # What the new layout writes loads back as it is.
    d.terms.load_state_dict(d.terms.state_dict())
    bad = {**state, "cwd.per_pair.s9_t9.adapt.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="Unexpected key.*s9_t9"):
        d.terms.load_state_dict(bad)
