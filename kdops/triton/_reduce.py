"""Compensated running sums and fixed-order final reductions shared by the Triton kernels.

A loop that adds one tile per iteration into a [BLOCK] accumulator makes each lane add n / BLOCK
terms in sequence; in float32 that lane's error grows with the plane (at 2^31 pixels a lane adds
2^20 terms). kahan_add keeps a per-lane compensation instead, so the error stays at a few round-offs
for any length (float64 gains the same); kahan_total then adds the lanes as a tree.

The main kernels write one partial per program; one program then adds the partials in program
order, so the result is deterministic (no atomics) and nothing is read back on the host.
"""

import triton
import triton.language as tl

# kahan_add and kahan_total live in _common (its softmax rows use them); the kernels import them from either.
from kdops.triton._common import acc_scalar, kahan_add, kahan_total, size64  # noqa: F401


@triton.jit
def sum_column(ptr, count, stride, col, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Sum of ptr[i * stride + col] over i in [0, count), compensated."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    comp = tl.zeros([BLOCK], ACC)
    for start in range(0, size64(count), BLOCK):
        idx = start + offs
        acc, comp = kahan_add(acc, comp, tl.load(ptr + idx * stride + col, mask=idx < count, other=0.0).to(ACC))
    return kahan_total(acc, comp)


@triton.jit
def mean_kernel(partial_ptr, programs, out_ptr, norm_ptr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """partial is (programs, 2) = (sum, count): out = sum / count (0 when count = 0), norm = count."""
    total = sum_column(partial_ptr, programs, 2, 0, BLOCK, ACC)
    count = sum_column(partial_ptr, programs, 2, 1, BLOCK, ACC)
    tl.store(out_ptr, tl.where(count == 0, 0.0, total / tl.where(count == 0, 1.0, count)))
    tl.store(norm_ptr, count)


@triton.jit
def scaled_sum_kernel(partial_ptr, programs, stride, col, scale: tl.float64, out_ptr, BLOCK: tl.constexpr,
                      ACC: tl.constexpr):
    """out = scale * sum of column `col` of the (programs, stride) partials."""
    tl.store(out_ptr, acc_scalar(scale, ACC) * sum_column(partial_ptr, programs, stride, col, BLOCK, ACC))
