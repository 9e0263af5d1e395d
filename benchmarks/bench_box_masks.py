"""Benchmark: kdops.box_masks (forward only: no gradient), ~10 boxes per image, and 100 per image."""

import itertools

import pytest

import kdops
from common import batches, implementations, levels, run_case
from fgd_common import image_boxes, level_boxes, level_size

CASES = list(itertools.product(levels(), batches(), (10, 100), [i for i in implementations() if i != "compiled"]))


@pytest.mark.parametrize("level,batch,per_image,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_box_masks(benchmark, level, batch, per_image, impl):
    boxes = level_boxes(image_boxes(batch, per_image), level)
    size = level_size(level)

    def step(b):
        kdops.box_masks(b, size, validate=False, backend=impl)

    bytes_moved = 2 * batch * size[0] * size[1] * 4  # fg and bg written once
    run_case(benchmark, op=f"box_masks {per_image}/img", impl=impl, level=level, batch=batch, dtype="fp32",
             step=step, inputs=(boxes,), bytes_moved=bytes_moved)
