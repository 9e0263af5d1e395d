"""Benchmark: kdops.cwd_loss forward + backward at the FPN levels (tau = 1)."""

import itertools

import pytest

import kdops
from common import CHANNELS, FPN_LEVELS, batches, dtypes, feature, implementations, levels, pick, run_case
from kdops.reference.cwd_loss import cwd_loss as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_cwd_loss(benchmark, level, batch, dtype, impl):
    h, w = FPN_LEVELS[level]
    student = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    teacher = feature((batch, CHANNELS, h, w), dtype, 1)
    loss_fn = pick(impl, lambda s, t: reference(s, t, tau=1.0),
                   lambda backend: lambda s, t: kdops.cwd_loss(s, t, tau=1.0, backend=backend))

    def step(s, t):
        s.grad = None
        loss_fn(s, t).backward()

    bytes_moved = 5 * student.numel() * student.element_size()  # fwd reads S, T; bwd reads S, T, writes dS
    run_case(benchmark, op="cwd_loss", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student, teacher), bytes_moved=bytes_moved)
