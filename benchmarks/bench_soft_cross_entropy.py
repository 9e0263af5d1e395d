"""Benchmark: kdops.soft_cross_entropy forward + backward at the ROI-head shape (hard CE fused, w_0 = 1.5)."""

import pytest
import torch

import kdops
from common import DEVICE, dtypes, feature, implementations, pick, run_case
from head_shapes import ROI_CLASSES, ROI_ROWS, labels
from kdops.reference.soft_cross_entropy import soft_cross_entropy as reference

CASES = [(dtype, impl) for dtype in dtypes() for impl in implementations()]


@pytest.mark.parametrize("dtype,impl", CASES, ids=["-".join(c) for c in CASES])
def test_soft_cross_entropy(benchmark, dtype, impl):
    student = feature((ROI_ROWS, ROI_CLASSES), dtype, 0, requires_grad=True)
    teacher = feature((ROI_ROWS, ROI_CLASSES), dtype, 1)
    target = labels((ROI_ROWS,), 0, ROI_CLASSES, 2)
    weight = torch.ones(ROI_CLASSES, device=DEVICE)
    weight[0] = 1.5
    loss_fn = pick(impl, lambda s, t, y: reference(s, t, class_weight=weight, target=y, mu=0.5)[0],
                   lambda backend: lambda s, t, y: kdops.soft_cross_entropy(s, t, class_weight=weight, target=y, mu=0.5,
                                                                            backend=backend))

    def step(s, t, y):
        s.grad = None
        loss_fn(s, t, y).backward()

    e = student.element_size()
    bytes_moved = 5 * student.numel() * e + 2 * target.numel() * 8  # fwd reads S, T; bwd reads S, T, writes dS
    run_case(benchmark, op="soft_cross_entropy", impl=impl, level="ROI", batch=ROI_ROWS, dtype=dtype, step=step,
             inputs=(student, teacher, target), bytes_moved=bytes_moved, rounds=20, iterations=10)
