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


@triton.jit
def kahan_add(total, comp, x):
    """total + x with Kahan compensation, per lane; returns the new (total, comp).

    `comp` is what rounding added too much, so the sum is total - comp (kahan_total). Start both at 0.
    """
    y = x - comp
    t = total + y
    # Where the total is inf or NaN there is no low part: inf and NaN then come out as a plain sum's.
    comp = tl.where(tl.abs(t) < float("inf"), (t - total) - y, 0.0)
    return t, comp


@triton.jit
def kahan_total(total, comp):
    """The compensated per-lane sums of a [BLOCK] accumulator, added over the lanes."""
    return tl.sum(total - comp, axis=0)


@triton.jit
def sum_column(ptr, count, stride, col, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Sum of ptr[i * stride + col] over i in [0, count), compensated."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    comp = tl.zeros([BLOCK], ACC)
    for start in range(0, count, BLOCK):
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
def scaled_sum_kernel(partial_ptr, programs, stride, col, scale, out_ptr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """out = scale * sum of column `col` of the (programs, stride) partials."""
    tl.store(out_ptr, scale * sum_column(partial_ptr, programs, stride, col, BLOCK, ACC))
