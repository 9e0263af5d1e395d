"""Benchmark: kdops.relation_mse forward + backward (student and delta gradients)."""

import itertools

import pytest
import torch

import kdops
from common import CHANNELS, DEVICE, batches, dtypes, feature, implementations, levels, pick, run_case
from fgd_common import level_size
from kdops.reference.relation_mse import relation_mse as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_relation_mse(benchmark, level, batch, dtype, impl):
    h, w = level_size(level)
    student = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    teacher = feature((batch, CHANNELS, h, w), dtype, 1)
    delta_s = torch.randn(batch, CHANNELS, device=DEVICE, requires_grad=True)
    delta_t = torch.randn(batch, CHANNELS, device=DEVICE, requires_grad=True)
    loss_fn = pick(impl, lambda s, t, ds, dt: reference(s, t, delta_s=ds, delta_t=dt),
                   lambda backend: lambda s, t, ds, dt: kdops.relation_mse(s, t, delta_s=ds, delta_t=dt,
                                                                           backend=backend))

    def step(s, t, ds, dt):
        s.grad = ds.grad = dt.grad = None
        loss_fn(s, t, ds, dt).backward()

    # Fused: forward reads S, T; backward reads S, T and writes dS.
    bytes_moved = 5 * student.numel() * student.element_size()
    run_case(benchmark, op="relation_mse", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student, teacher, delta_s, delta_t), bytes_moved=bytes_moved)
