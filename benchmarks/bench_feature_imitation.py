"""Benchmark: kdops.feature_imitation forward + backward (masked MSE, mask normalisation)."""

import itertools

import pytest
import torch

import kdops
from common import CHANNELS, FPN_LEVELS, batches, dtypes, feature, implementations, levels, pick, run_case
from kdops.reference.feature_imitation import feature_imitation as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_feature_imitation(benchmark, level, batch, dtype, impl):
    h, w = FPN_LEVELS[level]
    student = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    teacher = feature((batch, CHANNELS, h, w), dtype, 1)
    mask = (torch.rand((batch, h, w), device=student.device) > 0.7).to(student.dtype)
    loss_fn = pick(impl, lambda s, t, m: reference(s, t, mask=m, normalize="mask"),
                   lambda backend: lambda s, t, m: kdops.feature_imitation(s, t, mask=m, normalize="mask",
                                                                           backend=backend))

    def step(s, t, m):
        s.grad = None
        loss_fn(s, t, m).backward()

    # A fused pass pair: forward reads S, T, M; backward reads S, T, M and writes dS.
    e = student.element_size()
    bytes_moved = 5 * student.numel() * e + 2 * mask.numel() * e
    run_case(benchmark, op="feature_imitation", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student, teacher, mask), bytes_moved=bytes_moved)
