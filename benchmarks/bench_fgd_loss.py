"""Benchmark: kdops.nn.FGDLoss forward + backward, per FPN level and over all of P2..P6 in one step
(one FGDLoss per level, as a detector trains it), ~10 boxes per image.

Implementations: "official" (the official-style eager port, tests/support/official_fgd.py: a Python loop over
boxes), "reference" (FGDLoss on the pure-PyTorch reference ops, eager), "compiled" (torch.compile of
that), and each fused backend.
"""

import itertools
import os
import sys

import pytest
import torch

import kdops
from common import CHANNELS, DEVICE, FPN_LEVELS, batches, dtypes, feature, implementations, levels, run_case
from fgd_common import image_boxes, level_boxes

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
from support.official_fgd import official_from  # noqa: E402

ALL = "P2-P6"
LEVEL_SETS = [*([ALL] if os.environ.get("KDOPS_BENCH_FGD_ALL", "1") == "1" else []), *levels()]
CASES = list(itertools.product(LEVEL_SETS, batches(), dtypes(), ["official", *implementations()]))


def _modules(impl, names):
    modules = []
    for _ in names:
        backend = "reference" if impl in ("reference", "compiled", "official") else impl
        fgd = kdops.nn.FGDLoss.preset("retinanet", CHANNELS, CHANNELS, backend=backend).to(DEVICE)
        modules.append(official_from(fgd) if impl == "official" else fgd)
    return modules


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_fgd_loss(benchmark, level, batch, dtype, impl):
    names = list(FPN_LEVELS) if level == ALL else [level]
    students = [feature((batch, CHANNELS, *FPN_LEVELS[n]), dtype, 2 * i, requires_grad=True)
                for i, n in enumerate(names)]
    teachers = [feature((batch, CHANNELS, *FPN_LEVELS[n]), dtype, 2 * i + 1) for i, n in enumerate(names)]
    boxes = image_boxes(batch)
    per_level = [level_boxes(boxes, n) for n in names]
    modules = _modules(impl, names)
    if impl == "official" and dtype != "fp32":
        modules = [m.to(students[0].dtype) for m in modules]  # its convs must match the feature dtype
    calls = [torch.compile(m) for m in modules] if impl == "compiled" else modules
    if impl == "compiled":
        torch._dynamo.reset()

    def step(*feats):
        total = 0
        for call, s, t, b in zip(calls, feats[:len(names)], feats[len(names):], per_level):
            s.grad = None
            total = total + call(s, t, b)
        total.backward()

    numel = sum(s.numel() for s in students)
    bytes_moved = 16 * numel * students[0].element_size()  # the fused ops' passes over S and T, both ways
    run_case(benchmark, op="fgd_loss", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(*students, *teachers), bytes_moved=bytes_moved)
