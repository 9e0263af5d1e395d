"""Benchmark: kdops.gc_context forward + backward (feature and weight gradients)."""

import itertools

import pytest
import torch

import kdops
from common import CHANNELS, DEVICE, batches, dtypes, feature, implementations, levels, pick, run_case
from fgd_common import level_size
from kdops.reference.gc_context import gc_context as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_gc_context(benchmark, level, batch, dtype, impl):
    h, w = level_size(level)
    feat = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    weight = (torch.randn(CHANNELS, device=DEVICE) / CHANNELS ** 0.5).requires_grad_()
    bias = torch.zeros(1, device=DEVICE, requires_grad=True)
    context_fn = pick(impl, lambda f, wt, b: reference(f, wt, b)[0],
                      lambda backend: lambda f, wt, b: kdops.gc_context(f, wt, b, backend=backend))

    def step(f, wt, b):
        f.grad = wt.grad = b.grad = None
        context_fn(f, wt, b).square().sum().backward()

    # Fused: forward reads F once; backward reads F and writes dF.
    bytes_moved = 3 * feat.numel() * feat.element_size()
    run_case(benchmark, op="gc_context", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(feat, weight, bias), bytes_moved=bytes_moved)
