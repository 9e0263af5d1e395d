"""Benchmark: kdops.quality_focal_kd forward + backward at the dense-head shapes (docs/math.md "Shapes that
matter"), with mmdet's label weights; and the box term (kdops.nn.BoxKDLoss, a composition of PyTorch ops)
eager against torch.compile on the same anchors, which is the measurement behind keeping it unfused
(docs/math.md §12.1).

Rows are anchors (or locations) x 2 images at 800x1333 (strides 8-128: 22,400 locations per image): FCOS,
ATSS and GFL have one per location, RetinaNet nine; YOLOv8 at 640 has 8,400 per image, 16 images per GPU.
80 COCO classes as in the official code. The CPU default runs the one-per-location shape
(KDOPS_BENCH_LEVELS=FCOS,RetinaNet,YOLOv8 selects).
"""

import pytest
import torch

import kdops
from common import DEVICE, ON_GPU, _env_list, dtypes, feature, implementations, pick, run_case
from kdops.nn import BoxKDLoss
from kdops.reference.quality_focal_kd import quality_focal_kd as reference

CLASSES = 80
ROWS = {"FCOS": 2 * 22_400, "RetinaNet": 2 * 9 * 22_400, "YOLOv8": 16 * 8_400}


def shapes():
    return _env_list("KDOPS_BENCH_LEVELS", ROWS if ON_GPU else ("FCOS",))


def _label_weights(rows):
    g = torch.Generator(device="cpu").manual_seed(3)
    return (torch.rand(rows, generator=g) > 0.05).float().to(DEVICE)  # ~5% ignored anchors


CASES = [(shape, dtype, impl) for shape in shapes() for dtype in dtypes() for impl in implementations()]


@pytest.mark.parametrize("shape,dtype,impl", CASES, ids=["-".join(c) for c in CASES])
def test_quality_focal_kd(benchmark, shape, dtype, impl):
    rows = ROWS[shape]
    student = feature((rows, CLASSES), dtype, 0, requires_grad=True)
    teacher = feature((rows, CLASSES), dtype, 1)
    weight = _label_weights(rows)
    loss_fn = pick(impl, lambda s, t, w: reference(s, t, weight=w, normalize="sum")[0],
                   lambda backend: lambda s, t, w: kdops.quality_focal_kd(s, t, weight=w, normalize="sum",
                                                                           backend=backend))

    def step(s, t, w):
        s.grad = None
        loss_fn(s, t, w).backward()

    bytes_moved = 3 * student.numel() * student.element_size() + 2 * weight.numel() * 4  # s, t, ds; w twice
    run_case(benchmark, op="quality_focal_kd", impl=impl, level=shape, batch=rows, dtype=dtype, step=step,
             inputs=(student, teacher, weight), bytes_moved=bytes_moved, rounds=5 if not ON_GPU else None)


BOX_CASES = [(shape, impl) for shape in shapes() for impl in ("reference", "compiled")]


def _boxes(rows, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    xy = 800 * torch.rand(rows, 2, generator=g)
    return torch.cat([xy, xy + 10 + 200 * torch.rand(rows, 2, generator=g)], dim=1).to(DEVICE)


@pytest.mark.parametrize("shape,impl", BOX_CASES, ids=["-".join(c) for c in BOX_CASES])
def test_box_kd(benchmark, shape, impl):
    """The box term's GIoU on float32 boxes (it computes in float32 for every box dtype)."""
    rows = ROWS[shape]
    student = _boxes(rows, 0).requires_grad_()
    teacher = _boxes(rows, 1)
    weight = _label_weights(rows)
    loss_fn = pick(impl, BoxKDLoss(), None)

    def step(s, t, w):
        s.grad = None
        loss_fn(s, t, w, avg_factor=100.0).backward()

    run_case(benchmark, op="box_kd", impl=impl, level=shape, batch=rows, dtype="fp32", step=step,
             inputs=(student, teacher, weight), bytes_moved=3 * student.numel() * 4 + teacher.numel() * 4,
             rounds=5 if not ON_GPU else None)
