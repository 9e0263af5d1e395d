"""Triton kernels of masked feature imitation (docs/math.md §5): same algorithm as csrc/cuda/feature_imitation.cu.

Forward: one program per (n, c) row sums M * rho(S - T) over the row's pixels; a single program
adds the row partials (and sum(M) for normalize="mask") in a fixed order and divides by Z.
Backward: one elementwise pass writing dS, with grad / Z read on the device.
"""

import torch
import triton
import triton.language as tl

from kdops._layout import NORMALIZERS
from kdops.triton._common import (acc_dtype, acc_scalar, block_for, program_id64, row_tile, size64, tl_acc, warps_for,
                                    weighted)
from kdops.triton._reduce import kahan_add, kahan_total



@triton.jit
def _rho(d, LOSS: tl.constexpr):
    if LOSS == 0:
        return d * d
    else:
        return tl.abs(d)


@triton.jit
def _rho_grad(d, LOSS: tl.constexpr):
    if LOSS == 0:
        return 2.0 * d
    else:
        return tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))


@triton.jit
def _row_kernel(s_ptr, t_ptr, m_ptr, partial_ptr, C, HW, HAS_MASK: tl.constexpr, LOSS: tl.constexpr,
                BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = program_id64(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    comp = tl.zeros([BLOCK], ACC)
    for start in range(0, size64(HW), BLOCK):
        j = start + offs
        ok = j < HW
        s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
        t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
        r = _rho(s - t, LOSS)
        if HAS_MASK:
            r = weighted(tl.load(m_ptr + (row // C) * HW + j, mask=ok, other=0.0).to(ACC), r)
        acc, comp = kahan_add(acc, comp, r)
    tl.store(partial_ptr + row, kahan_total(acc, comp))


@triton.jit
def _finalize_kernel(partial_ptr, rows, m_ptr, mask_len, z_fixed: tl.float64, C, out_ptr, norm_ptr,
                     FROM_MASK: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    comp = tl.zeros([BLOCK], ACC)
    for start in range(0, size64(rows), BLOCK):
        acc, comp = kahan_add(acc, comp, tl.load(partial_ptr + start + offs, mask=start + offs < rows, other=0.0))
    total = kahan_total(acc, comp)
    if FROM_MASK:
        macc = tl.zeros([BLOCK], ACC)
        mcomp = tl.zeros([BLOCK], ACC)
        for start in range(0, size64(mask_len), BLOCK):
            macc, mcomp = kahan_add(macc, mcomp,
                                    tl.load(m_ptr + start + offs, mask=start + offs < mask_len, other=0.0).to(ACC))
        z = C * kahan_total(macc, mcomp)
    else:
        z = acc_scalar(z_fixed, ACC)
    safe_z = tl.where(z == 0, 1.0, z)
    tl.store(out_ptr, tl.where(z == 0, 0.0, total / safe_z))
    tl.store(norm_ptr, z)


def forward(student, teacher, mask, loss: int, normalize: int):
    """loss, normalize: the integer codes of kdops._layout.LOSSES and NORMALIZERS."""
    normalize = NORMALIZERS[normalize]
    s, t = student.contiguous(), teacher.contiguous()
    m = mask.contiguous() if mask is not None else None
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    out = torch.empty((), dtype=acc, device=s.device)
    norm = torch.empty((), dtype=acc, device=s.device)
    rows = n * c
    partial = torch.zeros(max(rows, 1), dtype=acc, device=s.device)
    if rows > 0 and hw > 0:
        block = block_for(hw, 2048)
        _row_kernel[(rows,)](s, t, m if m is not None else s, partial, c, hw, HAS_MASK=m is not None,
                             LOSS=loss, BLOCK=block, ACC=tl_acc(acc), num_warps=warps_for(block, acc))
    from_mask = normalize == "mask" and m is not None
    z_fixed = {"batch": float(n), "mean": float(n * c * hw), "mask": float(c * n * hw)}[normalize]
    _finalize_kernel[(1,)](partial, rows, m if from_mask else partial, n * hw, z_fixed, c, out, norm,
                           FROM_MASK=from_mask, BLOCK=1024, ACC=tl_acc(acc))
    return out, norm


@triton.jit
def _grad_kernel(grad_ptr, norm_ptr, s_ptr, t_ptr, m_ptr, out_ptr, C, HW, tiles, HAS_MASK: tl.constexpr,
                 LOSS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    row, tile = row_tile(tiles)
    j = tile * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    z = tl.load(norm_ptr).to(ACC)
    coef = tl.where(z == 0, 0.0, tl.load(grad_ptr).to(ACC) / tl.where(z == 0, 1.0, z))
    s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    g = coef * _rho_grad(s - t, LOSS)
    if HAS_MASK:
        g = weighted(tl.load(m_ptr + (row // C) * HW + j, mask=ok, other=0.0).to(ACC), g)
    tl.store(out_ptr + row * HW + j, g.to(out_ptr.dtype.element_ty), mask=ok)


def backward(grad, student, teacher, mask, norm, loss: int):
    s, t = student.contiguous(), teacher.contiguous()
    m = mask.contiguous() if mask is not None else None
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    block = block_for(hw, 1024)
    tiles = triton.cdiv(hw, block)
    _grad_kernel[(n * c * tiles,)](
        grad.to(acc).reshape(1), norm.to(acc).reshape(1), s, t, m if m is not None else s, out, c, hw, tiles,
        HAS_MASK=m is not None, LOSS=loss, BLOCK=block, ACC=tl_acc(acc))
    return out
