"""Triton kernels of the FGD focal loss (docs/math.md §3): same algorithm as csrc/cuda/fgd_focal_loss.cu.

Forward: the attention-mask kernels read S and T once each; one program per image computes the
attention loss and its gradient coefficients; one program per (n, c) row sums the teacher-weighted
squared differences under M_fg and M_bg; one program adds all partials in a fixed order.
Backward: one elementwise pass writing dS, the incoming gradients read on the device.
"""

import torch
import triton
import triton.language as tl

from kdops.triton import attention_masks
from kdops.triton._common import (acc_dtype, acc_scalar, block_for, program_id64, row_tile, size64, tl_acc,
                                    weighted)
from kdops.triton._fgd import attention_kernel, weighted_loss
from kdops.triton._reduce import kahan_add, kahan_total, sum_column


@triton.jit
def _feature_kernel(s_ptr, t_ptr, fg_ptr, bg_ptr, t_sp_ptr, t_ch_ptr, fg_part_ptr, bg_part_ptr, C, HW,
                    BLOCK: tl.constexpr, ACC: tl.constexpr):
    row = program_id64(0)  # row = n * C + c
    pixels = (row // C) * HW
    offs = tl.arange(0, BLOCK)
    sf = tl.zeros([BLOCK], ACC)
    sf_c = tl.zeros([BLOCK], ACC)
    sb = tl.zeros([BLOCK], ACC)
    sb_c = tl.zeros([BLOCK], ACC)
    for start in range(0, size64(HW), BLOCK):
        j = start + offs
        ok = j < HW
        s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
        t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
        a = tl.load(t_sp_ptr + pixels + j, mask=ok, other=0.0)
        d2 = (s - t) * (s - t) * a
        sf, sf_c = kahan_add(sf, sf_c, weighted(tl.load(fg_ptr + pixels + j, mask=ok, other=0.0), d2))
        sb, sb_c = kahan_add(sb, sb_c, weighted(tl.load(bg_ptr + pixels + j, mask=ok, other=0.0), d2))
    channel = tl.load(t_ch_ptr + row)
    tl.store(fg_part_ptr + row, kahan_total(sf, sf_c) * channel)
    tl.store(bg_part_ptr + row, kahan_total(sb, sb_c) * channel)


@triton.jit
def _finalize_kernel(fg_part_ptr, bg_part_ptr, rows, att_part_ptr, N, inv_n: tl.float64, alpha: tl.float64,
                     beta: tl.float64, gamma: tl.float64, loss_ptr, terms_ptr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    inv_n, alpha, beta, gamma = (acc_scalar(inv_n, ACC), acc_scalar(alpha, ACC), acc_scalar(beta, ACC),
                                 acc_scalar(gamma, ACC))
    l_fg = sum_column(fg_part_ptr, rows, 1, 0, BLOCK, ACC) * inv_n
    l_bg = sum_column(bg_part_ptr, rows, 1, 0, BLOCK, ACC) * inv_n
    l_att = sum_column(att_part_ptr, N, 1, 0, BLOCK, ACC) * inv_n
    tl.store(terms_ptr, l_fg)
    tl.store(terms_ptr + 1, l_bg)
    tl.store(terms_ptr + 2, l_att)
    tl.store(loss_ptr, weighted_loss(alpha, l_fg, beta, l_bg, gamma, l_att))


def forward(student, teacher, fg, bg, temperature: float, alpha: float, beta: float, gamma: float):
    s, t = student.contiguous(), teacher.contiguous()
    fg, bg = fg.contiguous(), bg.contiguous()
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    loss = torch.zeros((), dtype=acc, device=s.device)
    terms = torch.zeros(3, dtype=acc, device=s.device)
    if n == 0:
        pixels, channels = s.new_empty((0, h, w), dtype=acc), s.new_empty((0, c), dtype=acc)
        return loss, terms, pixels, channels, pixels.clone(), channels.clone()
    s_sp, s_ch = attention_masks.forward(s, temperature)
    t_sp, t_ch = attention_masks.forward(t, temperature)
    pixel_att, channel_att = torch.empty_like(t_sp), torch.empty_like(t_ch)
    att_part = torch.empty(n, dtype=acc, device=s.device)
    attention_kernel[(n,)](s_sp, t_sp, s_ch, t_ch, pixel_att, channel_att, att_part, c, hw, 1.0 / n,
                            1.0 / temperature, BLOCK_HW=block_for(hw, 1024), BLOCK_C=block_for(c, 1024),
                            ACC=tl_acc(acc))
    fg_part = torch.empty(n * c, dtype=acc, device=s.device)
    bg_part = torch.empty_like(fg_part)
    _feature_kernel[(n * c,)](s, t, fg, bg, t_sp, t_ch, fg_part, bg_part, c, hw, BLOCK=block_for(hw, 1024),
                              ACC=tl_acc(acc))
    _finalize_kernel[(1,)](fg_part, bg_part, n * c, att_part, n, 1.0 / n, alpha, beta, gamma, loss, terms,
                           BLOCK=1024, ACC=tl_acc(acc))
    return loss, terms, t_sp, t_ch, pixel_att, channel_att


@triton.jit
def _grad_kernel(grad_loss_ptr, grad_terms_ptr, s_ptr, t_ptr, fg_ptr, bg_ptr, t_sp_ptr, t_ch_ptr, pixel_ptr,
                 channel_ptr, out_ptr, C, HW, tiles, two_over_n: tl.float64, alpha: tl.float64, beta: tl.float64,
                 gamma: tl.float64, BLOCK: tl.constexpr, ACC: tl.constexpr):
    two_over_n, alpha, beta, gamma = (acc_scalar(two_over_n, ACC), acc_scalar(alpha, ACC), acc_scalar(beta, ACC),
                                      acc_scalar(gamma, ACC))
    row, tile = row_tile(tiles)  # row = n * C + c
    j = tile * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    pixels = (row // C) * HW
    gl = tl.load(grad_loss_ptr).to(ACC)
    c_fg = alpha * gl + tl.load(grad_terms_ptr).to(ACC)
    c_bg = beta * gl + tl.load(grad_terms_ptr + 1).to(ACC)
    c_att = gamma * gl + tl.load(grad_terms_ptr + 2).to(ACC)
    m = two_over_n * (c_fg * tl.load(fg_ptr + pixels + j, mask=ok, other=0.0)
                      + c_bg * tl.load(bg_ptr + pixels + j, mask=ok, other=0.0))
    weight = tl.load(t_sp_ptr + pixels + j, mask=ok, other=0.0) * tl.load(t_ch_ptr + row)
    att = weighted(c_att, tl.load(pixel_ptr + pixels + j, mask=ok, other=0.0) + tl.load(channel_ptr + row))
    s = tl.load(s_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    t = tl.load(t_ptr + row * HW + j, mask=ok, other=0.0).to(ACC)
    sign = tl.where(s > 0, 1.0, tl.where(s < 0, -1.0, 0.0))
    tl.store(out_ptr + row * HW + j, (weighted(m, weight * (s - t)) + sign * att).to(out_ptr.dtype.element_ty),
             mask=ok)


def backward(grad_loss, grad_terms, student, teacher, fg, bg, t_spatial, t_channel, pixel_att, channel_att,
             alpha: float, beta: float, gamma: float):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    if s.numel() == 0:
        return out
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    block = block_for(hw, 1024)
    tiles = triton.cdiv(hw, block)
    _grad_kernel[(n * c * tiles,)](
        grad_loss.to(acc).reshape(1), grad_terms.to(acc).contiguous(), s, t, fg.contiguous(), bg.contiguous(),
        t_spatial.contiguous(), t_channel.contiguous(), pixel_att.contiguous(), channel_att.contiguous(), out, c, hw,
        tiles, 2.0 / n, alpha, beta, gamma, BLOCK=block, ACC=tl_acc(acc))
    return out
