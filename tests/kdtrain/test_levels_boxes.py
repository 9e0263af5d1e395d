"""FPN levels pair by stride, and boxes map with the padded batch size / stride."""

from collections import OrderedDict

import torch

from kdtrain.visualize import boxes_on_level
from kdtrain.distill.levels import LevelPair, level_strides, pair_levels, probe_levels
from kdtrain.models import build_detector

from kdtrain_testutil import tiny_spec


def test_strides_of_torchvision_backbones():
    _, mnv3 = probe_levels(build_detector(tiny_spec("fasterrcnn_mobilenet_v3_large_320_fpn")).backbone)
    _, r18 = probe_levels(build_detector(tiny_spec("fasterrcnn_resnet18_fpn")).backbone)
    assert list(mnv3.values()) == [32, 32, 64]
    assert dict(r18) == {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}


def test_pairing_is_by_stride_not_name():
    student = OrderedDict([("0", 32), ("1", 32), ("pool", 64)])
    teacher = OrderedDict([("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64)])
    pairs = pair_levels(student, teacher)
    assert pairs == [LevelPair("0", "3", 32), LevelPair("1", "3", 32), LevelPair("pool", "pool", 64)]
    # RetinaNet-style names and strides 8..128 against ResNet-FPN 4..64.
    retina = OrderedDict([("p3", 8), ("p4", 16), ("p5", 32), ("p6", 64), ("p7", 128)])
    assert [(p.student, p.teacher) for p in pair_levels(retina, teacher)] == [
        ("p3", "1"), ("p4", "2"), ("p5", "3"), ("p6", "pool")]


def test_low_resolution_student_pairs_by_image_stride():
    # At half input size, a stride-16 student level covers 32 image pixels.
    pairs = pair_levels(OrderedDict([("2", 16)]), OrderedDict([("2", 16), ("3", 32)]), student_input_scale=0.5)
    assert pairs == [LevelPair("2", "3", 32)]


def test_level_strides_round_ceil_sized_maps():
    feats = OrderedDict([("3", torch.zeros(1, 1, 5, 5)), ("pool", torch.zeros(1, 1, 3, 3))])
    assert dict(level_strides(feats, (160, 160))) == {"3": 32, "pool": 64}


def test_boxes_use_the_padded_batch_not_the_image():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    # Two images of different widths: the narrow one is padded to the batch width.
    transform = GeneralizedRCNNTransform(64, 128, [0.5] * 3, [0.5] * 3, size_divisible=32)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 96)]
    targets = [{"boxes": torch.tensor([[32.0, 16.0, 64.0, 48.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "labels": torch.tensor([1])}]
    image_list, targets = transform(images, targets)
    assert tuple(image_list.tensors.shape[-2:]) == (64, 96)
    mapped = boxes_on_level(targets, 32)
    # Box x 32..64 at stride 32 is cells 1..2 on a 3-wide map; the unpadded-size rule
    # of FGD's code would give 32/64*3 = 1.5 .. 3.0 instead.
    assert torch.allclose(mapped[0], torch.tensor([[1.0, 0.5, 2.0, 1.5]]))
    assert torch.allclose(mapped[1], torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
