"""Model specs: the stride-8 MobileNetV3 student, per-level anchor sizes, and their errors."""

import pytest
import torch

from kdtrain.distill.levels import probe_levels
from kdtrain.models import ModelSpec, build_detector


def test_hires_mobilenet_fpn_starts_at_stride_8_and_trains():
    model = build_detector(ModelSpec("fasterrcnn_mobilenet_v3_large_hires_fpn", 3, min_size=64, max_size=64))
    _, strides = probe_levels(model.backbone)
    assert list(strides.values()) == [8, 16, 32, 64]
    model.train()
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([1])}]
    losses = model([torch.rand(3, 64, 64)], targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("arch,sizes", [("fasterrcnn_resnet18_fpn", [8, 16, 32, 64, 128]),
                                        ("fasterrcnn_mobilenet_v3_large_hires_fpn", [16, 32, 64, 128]),
                                        ("retinanet_resnet50_fpn", [16, 32, 64, 128, 256])])
def test_anchor_sizes_replace_the_builders_anchors(arch, sizes):
    model = build_detector(ModelSpec(arch, 3, min_size=64, max_size=64, kwargs={"anchor_sizes": sizes}))
    generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
    assert [s[0] for s in generator.sizes] == sizes
    assert all(len(r) == 3 for r in generator.aspect_ratios)


@pytest.mark.parametrize("arch,sizes,match", [
    ("fasterrcnn_resnet18_fpn", [], "anchor_sizes must be a non-empty list"),
    ("fasterrcnn_resnet18_fpn", [16, -1], "anchor_sizes must be a non-empty list"),
    ("fcos_resnet50_fpn", [16, 32, 64, 128, 256], "anchor-free"),
])
def test_bad_anchor_sizes_are_clear(arch, sizes, match):
    with pytest.raises(ValueError, match=match):
        build_detector(ModelSpec(arch, 3, kwargs={"anchor_sizes": sizes}))
