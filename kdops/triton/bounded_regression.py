"""Triton kernels of the teacher-bounded L2 loss (docs/math.md §7): csrc/include/kdops/math/bounded_regression.h.
Forward: each program takes BLOCK_R rows of D values and writes one (weighted sum, count) partial;
one program adds the partials in order. Backward: per row, the bound is recomputed, then dS written.
"""

import torch
import triton
import triton.language as tl

from kdops.triton._common import acc_dtype, acc_scalar, program_id64, size64, tl_acc, weighted
from kdops.triton._reduce import mean_kernel

WARPS = 8


def _tiles(d: int):
    """(rows, values) per tile: 1024 values, 4 per thread of WARPS warps (no register spills), and no idle lanes
    for the usual D = 4."""
    block_d = min(256, triton.next_power_of_2(max(d, 1)))
    return 1024 // block_d, block_d


@triton.jit
def _row_errors(s_ptr, t_ptr, y_ptr, r, r_ok, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    D = size64(D)
    e_s = tl.zeros([BLOCK_R], ACC)
    e_t = tl.zeros([BLOCK_R], ACC)
    for start in range(0, D, BLOCK_D):
        k = start + tl.arange(0, BLOCK_D)
        ok = r_ok[:, None] & (k < D)[None, :]
        offs = r[:, None] * D + k[None, :]
        y = tl.load(y_ptr + offs, mask=ok, other=0.0).to(ACC)
        ds = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC) - y
        dt = tl.load(t_ptr + offs, mask=ok, other=0.0).to(ACC) - y
        e_s += tl.sum(ds * ds, axis=1)
        e_t += tl.sum(dt * dt, axis=1)
    return e_s, e_t


@triton.jit
def _forward_kernel(s_ptr, t_ptr, y_ptr, w_ptr, partial_ptr, rows, D, margin: tl.float64, HAS_W: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    margin = acc_scalar(margin, ACC)
    pid = program_id64(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    e_s, e_t = _row_errors(s_ptr, t_ptr, y_ptr, r, r_ok, D, BLOCK_R, BLOCK_D, ACC)
    # a NaN e_s or e_t makes both comparisons false: the row's term is NaN (docs/math.md §7.3)
    per_row = tl.where(e_s + margin > e_t, e_s, tl.where(e_s + margin <= e_t, 0.0, e_s + margin - e_t))
    counts = r_ok
    if HAS_W:
        w = tl.load(w_ptr + r, mask=r_ok, other=0.0).to(ACC)
        per_row = weighted(w, per_row)
        counts = r_ok & (w > 0)
    tl.store(partial_ptr + pid * 2, tl.sum(tl.where(r_ok, per_row, 0.0), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(counts.to(ACC), axis=0))


def forward(student, teacher, target, weight, margin: float):
    s, t, y = student.contiguous(), teacher.contiguous(), target.contiguous()
    rows, d = s.shape
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    norm = torch.empty((), dtype=acc, device=s.device)
    block_r, block_d = _tiles(d)
    programs = max(1, triton.cdiv(rows, block_r))
    partial = torch.zeros((programs, 2), dtype=acc, device=s.device)
    if rows > 0:
        w = weight.contiguous() if weight is not None else s
        _forward_kernel[(programs,)](s, t, y, w, partial, rows, d, margin, HAS_W=weight is not None,
                                     BLOCK_R=block_r, BLOCK_D=block_d, ACC=tl_acc(acc), num_warps=WARPS)
    mean_kernel[(1,)](partial, programs, out, norm, BLOCK=1024, ACC=tl_acc(acc))
    return out, norm


@triton.jit
def _backward_kernel(grad_ptr, norm_ptr, s_ptr, t_ptr, y_ptr, w_ptr, out_ptr, rows, D, margin: tl.float64,
                     HAS_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    margin, D = acc_scalar(margin, ACC), size64(D)
    r = program_id64(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    count = tl.load(norm_ptr).to(ACC)
    coef = tl.where(count == 0, 0.0, tl.load(grad_ptr).to(ACC) / tl.where(count == 0, 1.0, count))
    e_s, e_t = _row_errors(s_ptr, t_ptr, y_ptr, r, r_ok, D, BLOCK_R, BLOCK_D, ACC)
    scale = tl.where(e_s + margin > e_t, 2.0 * coef, tl.where(e_s + margin <= e_t, 0.0, e_s + margin - e_t))
    if HAS_W:
        w = tl.load(w_ptr + r, mask=r_ok, other=0.0).to(ACC)
    else:
        w = tl.full([BLOCK_R], 1.0, ACC)
    w = tl.where(e_s + margin <= e_t, 0.0, w)  # a bounded row's gradient is 0 whatever its weight (math header)
    for start in range(0, D, BLOCK_D):
        k = start + tl.arange(0, BLOCK_D)
        ok = r_ok[:, None] & (k < D)[None, :]
        offs = r[:, None] * D + k[None, :]
        ds = tl.load(s_ptr + offs, mask=ok, other=0.0).to(ACC) - tl.load(y_ptr + offs, mask=ok, other=0.0).to(ACC)
        g = weighted(w[:, None], scale[:, None] * ds)
        tl.store(out_ptr + offs, g.to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, target, weight, norm, margin: float):
    s, t, y = student.contiguous(), teacher.contiguous(), target.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    rows, d = s.shape
    acc = acc_dtype(s.dtype)
    block_r, block_d = _tiles(d)
    w = weight.contiguous() if weight is not None else s
    _backward_kernel[(triton.cdiv(rows, block_r),)](
        grad.to(acc).reshape(1), norm.to(acc).reshape(1), s, t, y, w, out, rows, d, margin, HAS_W=weight is not None,
        BLOCK_R=block_r, BLOCK_D=block_d, ACC=tl_acc(acc), num_warps=WARPS)
    return out
