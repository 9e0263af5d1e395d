"""Benchmark: kdops.pkd_loss forward + backward at the FPN levels (student gradient only)."""

import itertools

import pytest

import kdops
from common import CHANNELS, FPN_LEVELS, batches, dtypes, feature, implementations, levels, pick, run_case
from kdops.reference.pkd_loss import pkd_loss as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_pkd_loss(benchmark, level, batch, dtype, impl):
    h, w = FPN_LEVELS[level]
    student = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    teacher = feature((batch, CHANNELS, h, w), dtype, 1)
    loss_fn = pick(impl, reference, lambda backend: lambda s, t: kdops.pkd_loss(s, t, backend=backend))

    def step(s, t):
        s.grad = None
        loss_fn(s, t).backward()

    bytes_moved = 9 * student.numel() * student.element_size()  # fwd reads S, T three times; bwd S, T, dS
    run_case(benchmark, op="pkd_loss", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student, teacher), bytes_moved=bytes_moved)
