"""Benchmark: kdops.fgd_focal_loss forward + backward, box masks from ~10 boxes per image."""

import itertools

import pytest

import kdops
from common import CHANNELS, batches, dtypes, feature, implementations, levels, pick, run_case
from fgd_common import image_boxes, level_boxes, level_size
from kdops.reference.fgd_focal_loss import fgd_focal_loss as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))
WEIGHTS = dict(temperature=0.5, alpha=1e-3, beta=5e-4, gamma=5e-4)  # RetinaNet


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_fgd_focal_loss(benchmark, level, batch, dtype, impl):
    h, w = level_size(level)
    student = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    teacher = feature((batch, CHANNELS, h, w), dtype, 1)
    fg, bg = kdops.box_masks(level_boxes(image_boxes(batch), level), (h, w))
    loss_fn = pick(impl, lambda s, t, f, b: reference(s, t, fg=f, bg=b, **WEIGHTS)[0],
                   lambda backend: lambda s, t, f, b: kdops.fgd_focal_loss(s, t, fg=f, bg=b, **WEIGHTS,
                                                                           backend=backend))

    def step(s, t, f, b):
        s.grad = None
        loss_fn(s, t, f, b).backward()

    # Fused: forward reads S, T twice (masks, then the weighted loss); backward reads S, T and writes dS.
    bytes_moved = 7 * student.numel() * student.element_size()
    run_case(benchmark, op="fgd_focal_loss", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student, teacher, fg, bg), bytes_moved=bytes_moved)
