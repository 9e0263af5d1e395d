"""Fixed-order final reductions shared by the head/channel-loss Triton kernels.

The main kernels write one partial per program; one program then adds the partials in program
order, so the result is deterministic (no atomics) and nothing is read back on the host.
"""

import triton
import triton.language as tl


@triton.jit
def _sum_column(ptr, count, stride, col, BLOCK: tl.constexpr, ACC: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for start in range(0, count, BLOCK):
        idx = start + offs
        acc += tl.load(ptr + idx * stride + col, mask=idx < count, other=0.0).to(ACC)
    return tl.sum(acc, axis=0)


@triton.jit
def mean_kernel(partial_ptr, programs, out_ptr, norm_ptr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """partial is (programs, 2) = (sum, count): out = sum / count (0 when count = 0), norm = count."""
    total = _sum_column(partial_ptr, programs, 2, 0, BLOCK, ACC)
    count = _sum_column(partial_ptr, programs, 2, 1, BLOCK, ACC)
    tl.store(out_ptr, tl.where(count == 0, 0.0, total / tl.where(count == 0, 1.0, count)))
    tl.store(norm_ptr, count)


@triton.jit
def scaled_sum_kernel(partial_ptr, programs, stride, col, scale, out_ptr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """out = scale * sum of column `col` of the (programs, stride) partials."""
    tl.store(out_ptr, scale * _sum_column(partial_ptr, programs, stride, col, BLOCK, ACC))
