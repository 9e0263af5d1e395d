"""Benchmark: kdops.bounded_regression forward + backward at the ROI-head shape: class-specific deltas
(1024 proposals x 91 classes x 4), a per-box bound, positives weighted 1 (a quarter of the boxes)."""

import pytest
import torch

import kdops
from common import DEVICE, dtypes, feature, implementations, pick, run_case
from head_shapes import ROI_CLASSES, ROI_ROWS
from kdops.reference.bounded_regression import bounded_regression as reference

CASES = [(dtype, impl) for dtype in dtypes() for impl in implementations()]


@pytest.mark.parametrize("dtype,impl", CASES, ids=["-".join(c) for c in CASES])
def test_bounded_regression(benchmark, dtype, impl):
    shape = (ROI_ROWS, ROI_CLASSES, 4)
    student = feature(shape, dtype, 0, requires_grad=True)
    teacher = feature(shape, dtype, 1)
    target = feature(shape, dtype, 2)
    weight = (torch.rand(shape[:-1], device=DEVICE) < 0.25).float()
    loss_fn = pick(impl, lambda s, t, y, w: reference(s.reshape(-1, 4), t.reshape(-1, 4), target=y.reshape(-1, 4),
                                                      weight=w.reshape(-1))[0],
                   lambda backend: lambda s, t, y, w: kdops.bounded_regression(s, t, target=y, weight=w,
                                                                               backend=backend))

    def step(s, t, y, w):
        s.grad = None
        loss_fn(s, t, y, w).backward()

    e = student.element_size()
    bytes_moved = 7 * student.numel() * e + 2 * weight.numel() * 4  # fwd S, T, Y; bwd S, T, Y, writes dS
    run_case(benchmark, op="bounded_regression", impl=impl, level="ROI", batch=ROI_ROWS, dtype=dtype, step=step,
             inputs=(student, teacher, target, weight), bytes_moved=bytes_moved, rounds=20, iterations=10)
