"""Benchmark: kdops.soft_binary_cross_entropy forward + backward at the RPN shape (hard BCE fused)."""

import pytest

import kdops
from common import dtypes, feature, implementations, pick, run_case
from head_shapes import RPN_ANCHORS, labels
from kdops.reference.soft_binary_cross_entropy import soft_binary_cross_entropy as reference

CASES = [(dtype, impl) for dtype in dtypes() for impl in implementations()]


@pytest.mark.parametrize("dtype,impl", CASES, ids=["-".join(c) for c in CASES])
def test_soft_binary_cross_entropy(benchmark, dtype, impl):
    student = feature((RPN_ANCHORS,), dtype, 0, requires_grad=True)
    teacher = feature((RPN_ANCHORS,), dtype, 1)
    target = labels((RPN_ANCHORS,), -1, 2, 2)  # torchvision RPN labels: 1, 0, -1 (not sampled)
    loss_fn = pick(impl, lambda s, t, y: reference(s, t, target=y, mu=0.5)[0],
                   lambda backend: lambda s, t, y: kdops.soft_binary_cross_entropy(s, t, target=y, mu=0.5,
                                                                                   backend=backend))

    def step(s, t, y):
        s.grad = None
        loss_fn(s, t, y).backward()

    e = student.element_size()
    bytes_moved = 5 * student.numel() * e + 2 * target.numel() * 8
    run_case(benchmark, op="soft_binary_cross_entropy", impl=impl, level="RPN", batch=RPN_ANCHORS, dtype=dtype,
             step=step, inputs=(student, teacher, target), bytes_moved=bytes_moved, rounds=10)
