"""Helpers shared by the Triton kernels."""

import torch
import triton
import triton.language as tl


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype (docs/math.md §0): float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_for(n: int, cap: int) -> int:
    """A power-of-two block covering n items, at most cap and at least 16."""
    return max(16, min(cap, triton.next_power_of_2(max(int(n), 1))))


@triton.jit
def scaled_softmax_row(x_ptr, out_ptr, length, scale, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """out = length * softmax(x * scale) over one row of `length` values, in three streaming passes."""
    offs = tl.arange(0, BLOCK)
    row_max = tl.full([BLOCK], float("-inf"), ACC)
    for start in range(0, length, BLOCK):
        idx = start + offs
        x = tl.load(x_ptr + idx, mask=idx < length, other=float("-inf")).to(ACC)
        row_max = tl.maximum(row_max, x * scale)
    mx = tl.max(row_max, axis=0)
    row_sum = tl.zeros([BLOCK], ACC)
    for start in range(0, length, BLOCK):
        idx = start + offs
        x = tl.load(x_ptr + idx, mask=idx < length, other=float("-inf")).to(ACC)
        row_sum += tl.where(idx < length, tl.exp(x * scale - mx), 0.0)
    factor = length / tl.sum(row_sum, axis=0)
    for start in range(0, length, BLOCK):
        idx = start + offs
        x = tl.load(x_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        tl.store(out_ptr + idx, tl.exp(x * scale - mx) * factor, mask=idx < length)


@triton.jit
def scaled_softmax_grad_row(a_ptr, g_ptr, out_ptr, length, inv_temp, post_scale, BLOCK: tl.constexpr,
                            ACC: tl.constexpr):
    """out = inv_temp * a * (g - sum(a * g) / length) * post_scale: the backward of length * softmax."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for start in range(0, length, BLOCK):
        idx = start + offs
        a = tl.load(a_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        g = tl.load(g_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        acc += a * g
    weighted = tl.sum(acc, axis=0) / length
    for start in range(0, length, BLOCK):
        idx = start + offs
        a = tl.load(a_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        g = tl.load(g_ptr + idx, mask=idx < length, other=0.0).to(ACC)
        tl.store(out_ptr + idx, inv_temp * a * (g - weighted) * post_scale, mask=idx < length)
