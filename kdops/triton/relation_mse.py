"""Triton kernels of the FGD relation loss (docs/math.md §4): same algorithm as csrc/cuda/relation_mse.cu.

Forward: one program per (n, c) row sums r = S - T + delta and r^2 over the row; one program adds
the row partials in a fixed order. Backward: one elementwise pass, 2 grad / N read on the device.
"""

import torch
import triton
import triton.language as tl

from kdops.triton._common import acc_dtype, acc_scalar, block_for, program_id64, row_tile, size64, tl_acc, warps_for
from kdops.triton._reduce import kahan_add, kahan_total, scaled_sum_kernel


@triton.jit
def _row_kernel(s_ptr, t_ptr, ds_ptr, dt_ptr, row_sum_ptr, row_sq_ptr, HW, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = program_id64(0)
    delta = tl.load(ds_ptr + row) - tl.load(dt_ptr + row)
    offs = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], ACC)
    total_c = tl.zeros([BLOCK], ACC)
    sq = tl.zeros([BLOCK], ACC)
    sq_c = tl.zeros([BLOCK], ACC)
    for start in range(0, size64(HW), BLOCK):
        j = start + offs
        ok = j < HW
        s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
        t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
        r = tl.where(ok, s - t + delta, 0.0)
        total, total_c = kahan_add(total, total_c, r)
        sq, sq_c = kahan_add(sq, sq_c, r * r)
    tl.store(row_sum_ptr + row, kahan_total(total, total_c))
    tl.store(row_sq_ptr + row, kahan_total(sq, sq_c))


def forward(student, teacher, delta_s, delta_t):
    s, t = student.contiguous(), teacher.contiguous()
    ds, dt = delta_s.contiguous(), delta_t.contiguous()
    n, c, h, w = s.shape
    acc = acc_dtype(s.dtype)
    loss = torch.zeros((), dtype=acc, device=s.device)
    row_sum = torch.zeros((n, c), dtype=acc, device=s.device)
    if n * c == 0:
        return loss, row_sum
    row_sq = torch.empty((n, c), dtype=acc, device=s.device)
    block = block_for(h * w, 2048)
    _row_kernel[(n * c,)](s, t, ds, dt, row_sum, row_sq, h * w, BLOCK=block, ACC=tl_acc(acc),
                          num_warps=warps_for(block, acc))
    scaled_sum_kernel[(1,)](row_sq, n * c, 1, 0, 1.0 / n, loss, BLOCK=1024, ACC=tl_acc(acc))
    return loss, row_sum


@triton.jit
def _grad_kernel(grad_ptr, s_ptr, t_ptr, ds_ptr, dt_ptr, out_ptr, HW, tiles, two_over_n: tl.float64,
                 BLOCK: tl.constexpr, ACC: tl.constexpr):
    row, tile = row_tile(tiles)
    j = tile * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    coef = tl.load(grad_ptr).to(ACC) * acc_scalar(two_over_n, ACC)
    delta = tl.load(ds_ptr + row) - tl.load(dt_ptr + row)
    s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    tl.store(out_ptr + row * HW + j, (coef * (s - t + delta)).to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, delta_s, delta_t):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    n, c, h, w = s.shape
    acc = acc_dtype(s.dtype)
    block = block_for(h * w, 1024)
    tiles = triton.cdiv(h * w, block)
    _grad_kernel[(n * c * tiles,)](grad.to(acc).reshape(1), s, t, delta_s.contiguous(), delta_t.contiguous(), out,
                                   h * w, tiles, 2.0 / n, BLOCK=block, ACC=tl_acc(acc))
    return out
