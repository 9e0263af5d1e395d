"""Benchmark: kdops.ld_loss forward + backward (T = 10, weighted mean) on the box-edge distributions of a dense head.

Shapes (docs/math.md §11): GFL-R50 at 800x1333 (P3-P7 anchor points 100x168 + 50x84 + 25x42 + 13x21 + 7x11 =
22,400 per image, 2 images, 17 bins) and Ultralytics YOLO at 640x640 (80^2 + 40^2 + 20^2 = 8,400 anchor points per
image, batch 16, 16 bins); 4 edges per anchor. Every edge is passed, weighted: "fg" weights 5% of the anchors
(the foreground; the others 0, as a detector passes them without indexing), "all" weights every anchor.
"""

import itertools

import pytest
import torch

import kdops
from common import DEVICE, dtypes, feature, implementations, pick, run_case
from kdops.reference.ld_loss import ld_loss as reference

HEADS = {"GFL": (2 * 22_400, 17), "YOLO": (16 * 8_400, 16)}  # (anchors, bins)
WEIGHTED = {"fg": 0.05, "all": 1.0}  # fraction of anchors with a non-zero weight

CASES = list(itertools.product(HEADS, WEIGHTED, dtypes(), implementations()))


def _weight(anchors, fraction):
    g = torch.Generator(device="cpu").manual_seed(3)
    w = torch.rand(anchors, generator=g) * (torch.rand(anchors, generator=g) < fraction)
    return w.repeat_interleave(4).to(DEVICE)  # one weight per anchor, on its 4 edges


@pytest.mark.parametrize("head,weighted,dtype,impl", CASES, ids=["-".join(c) for c in CASES])
def test_ld_loss(benchmark, head, weighted, dtype, impl):
    anchors, bins = HEADS[head]
    student = feature((anchors * 4, bins), dtype, 0, requires_grad=True)
    teacher = feature((anchors * 4, bins), dtype, 1)
    weight = _weight(anchors, WEIGHTED[weighted])
    loss_fn = pick(impl, lambda s, t, w: reference(s, t, weight=w, temperature=10.0, normalize="weight")[0],
                   lambda backend: lambda s, t, w: kdops.ld_loss(s, t, weight=w, temperature=10.0,
                                                                 normalize="weight", backend=backend))

    def step(s, t, w):
        s.grad = None
        loss_fn(s, t, w).backward()

    bytes_moved = 5 * student.numel() * student.element_size() + 2 * weight.numel() * 4  # fwd S, T; bwd S, T, dS
    run_case(benchmark, op="ld_loss", impl=impl, level=f"{head}-{weighted}", batch=anchors, dtype=dtype, step=step,
             inputs=(student, teacher, weight), bytes_moved=bytes_moved, rounds=None if head == "YOLO" else 10)
