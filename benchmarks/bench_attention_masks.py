"""Benchmark: kdops.attention_masks forward + backward (both masks used)."""

import itertools

import pytest

import kdops
from common import CHANNELS, FPN_LEVELS, batches, dtypes, feature, implementations, levels, pick, run_case
from kdops.reference.attention_masks import attention_masks as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_attention_masks(benchmark, level, batch, dtype, impl):
    h, w = FPN_LEVELS[level]
    feat = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    masks = pick(impl, lambda f: reference(f, temperature=0.5),
                 lambda backend: lambda f: kdops.attention_masks(f, temperature=0.5, backend=backend))

    def step(f):
        f.grad = None
        spatial, channel = masks(f)
        (spatial.square().sum() + channel.square().sum()).backward()

    # A fused pass pair: forward reads F once; backward reads F and writes dF.
    bytes_moved = 3 * feat.numel() * feat.element_size()
    run_case(benchmark, op="attention_masks", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(feat,), bytes_moved=bytes_moved)
