"""Benchmark: kdops.nn.MGDLoss forward + backward per FPN level, and its two elementwise parts alone.

MGD has no fused kdops op of its own (docs/math.md §13): its convs stay cuDNN/oneDNN, the squared-error
epilogue is kdops.feature_imitation(normalize="batch") and the mask a torch.where. These cases measure
whether a fused op would pay:
  mgd_loss      the whole level: "official" (the port of the official loss, tests/support/official_mgd.py:
                mask drawn on the host as the official code does, a product, MSELoss(sum) / N), "reference"
                (MGDLoss on the reference squared-error op), "compiled" (torch.compile of that; the mask
                draw is a graph break), and MGDLoss on each fused backend.
  mgd_epilogue  alpha * sum (G - T)^2 / N alone: "official" MSELoss(sum) / N, the reference op, its compile,
                and kdops.feature_imitation on each fused backend.
  mgd_mask      the mask draw and its select, forward + backward, eager and compiled.
"""

import itertools
import os
import sys

import pytest
import torch

import kdops
from common import (CHANNELS, DEVICE, DTYPES, FPN_LEVELS, batches, dtypes, feature, implementations, levels, pick,
                    run_case)
from kdops.reference.feature_imitation import feature_imitation as reference_imitation

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
from support.official_mgd import official_from  # noqa: E402

ALPHA, LAMBDA = 2e-5, 0.65  # the one-stage preset
CASES = list(itertools.product(levels(), batches(), dtypes()))


def _ids(cases):
    return ["-".join(map(str, c)) for c in cases]


def _inputs(level, batch, dtype):
    h, w = FPN_LEVELS[level]
    student = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    return student, feature((batch, CHANNELS, h, w), dtype, 1)


@pytest.mark.parametrize("level,batch,dtype,impl", [(*c, i) for c in CASES for i in ["official", *implementations()]],
                         ids=_ids([(*c, i) for c in CASES for i in ["official", *implementations()]]))
def test_mgd_loss(benchmark, level, batch, dtype, impl):
    student, teacher = _inputs(level, batch, dtype)
    torch.manual_seed(0)
    backend = "reference" if impl in ("official", "reference", "compiled") else impl
    mgd = kdops.nn.MGDLoss(CHANNELS, CHANNELS, alpha=ALPHA, lambda_=LAMBDA, backend=backend).to(DEVICE, DTYPES[dtype])
    if impl == "official":
        official = official_from(mgd)
        n, _, h, w = student.shape

        def loss_fn(s, t):  # the official draw: torch.rand on the host, then .to(device)
            return official(s, t, torch.rand((n, 1, h, w)).to(s.device))
    else:
        loss_fn = torch.compile(mgd) if impl == "compiled" else mgd
        if impl == "compiled":
            torch._dynamo.reset()

    def step(s, t):
        s.grad = None
        loss_fn(s, t).backward()

    # The elementwise passes only (the convs dominate and are the same in every implementation).
    bytes_moved = 8 * student.numel() * student.element_size()
    run_case(benchmark, op="mgd_loss", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student, teacher), bytes_moved=bytes_moved)


@pytest.mark.parametrize("level,batch,dtype,impl", [(*c, i) for c in CASES for i in ["official", *implementations()]],
                         ids=_ids([(*c, i) for c in CASES for i in ["official", *implementations()]]))
def test_mgd_epilogue(benchmark, level, batch, dtype, impl):
    generated, teacher = _inputs(level, batch, dtype)
    n = generated.shape[0]
    if impl == "official":
        def loss_fn(g, t):
            return torch.nn.MSELoss(reduction="sum")(g, t) / n * ALPHA
    else:
        loss_fn = pick(impl, lambda g, t: ALPHA * reference_imitation(g, t, normalize="batch"),
                       lambda backend: lambda g, t: ALPHA * kdops.feature_imitation(g, t, normalize="batch",
                                                                                    backend=backend))

    def step(g, t):
        g.grad = None
        loss_fn(g, t).backward()

    # A fused pass pair: forward reads G and T, backward reads G and T and writes dG.
    bytes_moved = 5 * generated.numel() * generated.element_size()
    run_case(benchmark, op="mgd_epilogue", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(generated, teacher), bytes_moved=bytes_moved, iterations=5)


@pytest.mark.parametrize("level,batch,dtype,impl", [(*c, i) for c in CASES for i in ["reference", "compiled"]],
                         ids=_ids([(*c, i) for c in CASES for i in ["reference", "compiled"]]))
def test_mgd_mask(benchmark, level, batch, dtype, impl):
    student, _ = _inputs(level, batch, dtype)
    masks = kdops.nn.mgd.RandomPixelMask(LAMBDA, seed=0)
    n, _, h, w = student.shape
    upstream = torch.ones_like(student)

    def apply(s, keep):
        return torch.where(keep.unsqueeze(1), s, 0)

    apply_fn = torch.compile(apply) if impl == "compiled" else apply
    if impl == "compiled":
        torch._dynamo.reset()

    def step(s):
        s.grad = None
        apply_fn(s, masks(n, h, w, s.device)).backward(upstream)

    # The select: reads S and the mask, writes the masked map; its backward reads the gradient and the mask.
    bytes_moved = 4 * student.numel() * student.element_size()
    run_case(benchmark, op="mgd_mask", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student,), bytes_moved=bytes_moved, iterations=5)
