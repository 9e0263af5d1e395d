"""Triton kernels of the FGD feature pass: same algorithm as csrc/cpu/fgd_feature_pass.cpp.

Forward, one read of S and T: each program (image, pixel tile) walks the channels twice, the second
time from cache: first the per-pixel sums of |S|, |T| and both GcBlock logits, the per-channel sums of
|S|, |T|, S - T and the tile's sum (S - T)^2; then, with tile-local softmax maxima, the per-channel
sums of the teacher-attention-weighted squared differences under M_fg and M_bg and both partial
contexts. The tiles are merged in order, rescaled to the image maxima (online softmax); the masks
and the attention loss then live in (N, H*W) and (N, C) vectors.
Backward, one read of S and T and one write of dS: u_j = g . F[:, j] for both GcBlocks, then dS and
the partial GcBlock weight gradients.
"""

import torch
import triton
import triton.language as tl

from kdops._layout import FEATURE_PASS_PARTIALS, FEATURE_PASS_SOFTMAXES
from kdops.triton._common import (acc_dtype, acc_scalar, block_for, layout_constants, program_id64,
                                    scaled_softmax_row, size64, tl_acc, weighted)
from kdops.triton._fgd import attention_kernel, merged_max_and_sum, probs_kernel, sum_rows_kernel, weighted_loss
from kdops.triton._reduce import kahan_add, sum_column

# Per tile: PARTIALS per-channel partial sums and (max, sum) of each online softmax (kdops/_layout.py).
PARTIALS, ABS_S, ABS_T, DIFF, FG, BG, CTX_S, CTX_T = layout_constants(FEATURE_PASS_PARTIALS)
_, ATT, GC_S, GC_T = layout_constants(FEATURE_PASS_SOFTMAXES)
SOFTMAX_STATS = tl.constexpr(2 * len(FEATURE_PASS_SOFTMAXES))  # softmax k: max at 2 k, sum at 2 k + 1


@triton.jit
def _tile_softmax(x, ok, stat_ptr, scale=1.0):
    """exp((x - max) * scale) over a tile's valid entries; stores (max of x, sum) at stat_ptr. Shifted before scaled:
    x * scale - max compiles to one FMA, whose rounding at 1 / temperature = 1e30 is exp(+-1e23) at the max."""
    mx = tl.max(tl.where(ok, x, float("-inf")), axis=0)
    e = tl.where(ok, tl.exp((x - mx) * scale), 0.0)
    tl.store(stat_ptr, mx)
    tl.store(stat_ptr + 1, tl.sum(e, axis=0))
    return e


@triton.jit
def _load_chunk(s_ptr, t_ptr, n, c0, j, j_ok, C, HW, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Channels [c0, c0 + BLOCK_C) of S and T at pixels j of image n: (c, c_ok, mask, offsets, S, T)."""
    c = c0 + tl.arange(0, BLOCK_C)
    c_ok = c < C
    both = c_ok[:, None] & j_ok[None, :]
    offsets = (n * C + c[:, None]) * HW + j[None, :]
    x = tl.load(s_ptr + offsets, mask=both, other=0.0).to(ACC)
    y = tl.load(t_ptr + offsets, mask=both, other=0.0).to(ACC)
    return c, c_ok, both, offsets, x, y


@triton.jit
def _partial_kernel(s_ptr, t_ptr, fg_ptr, bg_ptr, ws_ptr, bs_ptr, wt_ptr, bt_ptr, ms_ptr, mt_ptr, ls_ptr, lt_ptr,
                    part_ptr, stat_ptr, sq_ptr, C, HW, tiles, att_scale: tl.float64, BLOCK_C: tl.constexpr,
                    BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    tile = program_id64(0)
    n = program_id64(1)
    task = n * tiles + tile
    j = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    j_ok = j < HW
    ms = tl.zeros([BLOCK_HW], ACC)
    mt = tl.zeros([BLOCK_HW], ACC)
    ls = tl.zeros([BLOCK_HW], ACC) + tl.load(bs_ptr)
    lt = tl.zeros([BLOCK_HW], ACC) + tl.load(bt_ptr)
    sq = tl.zeros([BLOCK_HW], ACC)
    part = part_ptr + task * PARTIALS * C
    for c0 in range(0, size64(C), BLOCK_C):
        c, c_ok, both, offsets, x, y = _load_chunk(s_ptr, t_ptr, n, c0, j, j_ok, C, HW, BLOCK_C, ACC)
        d = x - y
        ms += tl.sum(tl.abs(x), axis=0)
        mt += tl.sum(tl.abs(y), axis=0)
        ls += tl.sum(tl.load(ws_ptr + c, mask=c_ok, other=0.0)[:, None] * x, axis=0)
        lt += tl.sum(tl.load(wt_ptr + c, mask=c_ok, other=0.0)[:, None] * y, axis=0)
        sq += tl.sum(d * d, axis=0)
        tl.store(part + ABS_S * C + c, tl.sum(tl.abs(x), axis=1), mask=c_ok)
        tl.store(part + ABS_T * C + c, tl.sum(tl.abs(y), axis=1), mask=c_ok)
        tl.store(part + DIFF * C + c, tl.sum(d, axis=1), mask=c_ok)
    tl.store(ms_ptr + n * HW + j, ms, mask=j_ok)
    tl.store(mt_ptr + n * HW + j, mt, mask=j_ok)
    tl.store(ls_ptr + n * HW + j, ls, mask=j_ok)
    tl.store(lt_ptr + n * HW + j, lt, mask=j_ok)
    tl.store(sq_ptr + task, tl.sum(sq, axis=0))
    stats = stat_ptr + task * SOFTMAX_STATS
    e_att = _tile_softmax(mt, j_ok, stats + 2 * ATT, acc_scalar(att_scale, ACC))
    fg = tl.load(fg_ptr + n * HW + j, mask=j_ok, other=0.0)
    bg = tl.load(bg_ptr + n * HW + j, mask=j_ok, other=0.0)
    # a pixel where a mask is 0 adds exactly 0 (docs/math.md §0): its (S - T)^2 is replaced by 0 before the
    # product (this form, not kdops.triton._common.weighted, keeps the sweep free of register spills)
    w_fg, fg_on = e_att * fg, fg != 0
    w_bg, bg_on = e_att * bg, bg != 0
    e_s = _tile_softmax(ls, j_ok, stats + 2 * GC_S)
    e_t = _tile_softmax(lt, j_ok, stats + 2 * GC_T)
    for c0 in range(0, size64(C), BLOCK_C):  # the tile is in cache now
        c, c_ok, both, offsets, x, y = _load_chunk(s_ptr, t_ptr, n, c0, j, j_ok, C, HW, BLOCK_C, ACC)
        d2 = (x - y) * (x - y)
        tl.store(part + FG * C + c, tl.sum(tl.where(fg_on[None, :], d2, 0.0) * w_fg[None, :], axis=1), mask=c_ok)
        tl.store(part + BG * C + c, tl.sum(tl.where(bg_on[None, :], d2, 0.0) * w_bg[None, :], axis=1), mask=c_ok)
        tl.store(part + CTX_S * C + c, tl.sum(x * e_s[None, :], axis=1), mask=c_ok)
        tl.store(part + CTX_T * C + c, tl.sum(y * e_t[None, :], axis=1), mask=c_ok)


@triton.jit
def _merge_kernel(part_ptr, stat_ptr, ks_ptr, kt_ptr, dsum_ptr, fg_ptr, bg_ptr, ctx_s_ptr, ctx_t_ptr, gc_s_ptr,
                  gc_t_ptr, att_z_ptr, C, tiles, att_scale: tl.float64, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                  ACC: tl.constexpr):
    n = program_id64(0)
    c = program_id64(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    stats = stat_ptr + n * tiles * SOFTMAX_STATS
    att_scale = acc_scalar(att_scale, ACC)
    m_att, z_att = merged_max_and_sum(stats + 2 * ATT, stats + 2 * ATT + 1, SOFTMAX_STATS, tiles, BLOCK_T, ACC,
                                      att_scale)
    m_s, z_s = merged_max_and_sum(stats + 2 * GC_S, stats + 2 * GC_S + 1, SOFTMAX_STATS, tiles, BLOCK_T, ACC)
    m_t, z_t = merged_max_and_sum(stats + 2 * GC_T, stats + 2 * GC_T + 1, SOFTMAX_STATS, tiles, BLOCK_T, ACC)
    zero = tl.zeros([BLOCK_C], ACC)
    ks, kt, ds, fg, bg, cs, ct = zero, zero, zero, zero, zero, zero, zero
    ks_c, kt_c, ds_c, fg_c, bg_c, cs_c, ct_c = zero, zero, zero, zero, zero, zero, zero
    for k in range(0, tiles):
        part = part_ptr + (n * tiles + k) * PARTIALS * C + c
        r_att = tl.exp((tl.load(stats + k * SOFTMAX_STATS + 2 * ATT) - m_att) * att_scale)
        r_s = tl.exp(tl.load(stats + k * SOFTMAX_STATS + 2 * GC_S) - m_s)
        r_t = tl.exp(tl.load(stats + k * SOFTMAX_STATS + 2 * GC_T) - m_t)
        ks, ks_c = kahan_add(ks, ks_c, tl.load(part + ABS_S * C, mask=c_ok, other=0.0))
        kt, kt_c = kahan_add(kt, kt_c, tl.load(part + ABS_T * C, mask=c_ok, other=0.0))
        ds, ds_c = kahan_add(ds, ds_c, tl.load(part + DIFF * C, mask=c_ok, other=0.0))
        fg, fg_c = kahan_add(fg, fg_c, tl.load(part + FG * C, mask=c_ok, other=0.0) * r_att)
        bg, bg_c = kahan_add(bg, bg_c, tl.load(part + BG * C, mask=c_ok, other=0.0) * r_att)
        cs, cs_c = kahan_add(cs, cs_c, tl.load(part + CTX_S * C, mask=c_ok, other=0.0) * r_s)
        ct, ct_c = kahan_add(ct, ct_c, tl.load(part + CTX_T * C, mask=c_ok, other=0.0) * r_t)
    tl.store(ks_ptr + n * C + c, ks - ks_c, mask=c_ok)
    tl.store(kt_ptr + n * C + c, kt - kt_c, mask=c_ok)
    tl.store(dsum_ptr + n * C + c, ds - ds_c, mask=c_ok)
    tl.store(fg_ptr + n * C + c, fg - fg_c, mask=c_ok)
    tl.store(bg_ptr + n * C + c, bg - bg_c, mask=c_ok)
    tl.store(ctx_s_ptr + n * C + c, (cs - cs_c) / z_s, mask=c_ok)
    tl.store(ctx_t_ptr + n * C + c, (ct - ct_c) / z_t, mask=c_ok)
    if program_id64(1) == 0:  # the GcBlock softmax statistics, as gc_context's probs kernel reads them
        tl.store(gc_s_ptr + 2 * n, m_s)
        tl.store(gc_s_ptr + 2 * n + 1, z_s)
        tl.store(gc_t_ptr + 2 * n, m_t)
        tl.store(gc_t_ptr + 2 * n + 1, z_t)
        tl.store(att_z_ptr + n, z_att)


@triton.jit
def _masks_kernel(ms_ptr, mt_ptr, ks_ptr, kt_ptr, C, HW, pixel_scale: tl.float64, channel_scale: tl.float64,
                  BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """The four attention masks of one image, in place over the sums."""
    n = program_id64(0)
    pixel_scale, channel_scale = acc_scalar(pixel_scale, ACC), acc_scalar(channel_scale, ACC)
    scaled_softmax_row(ms_ptr + n * HW, ms_ptr + n * HW, HW, pixel_scale, BLOCK_HW, ACC)
    scaled_softmax_row(mt_ptr + n * HW, mt_ptr + n * HW, HW, pixel_scale, BLOCK_HW, ACC)
    scaled_softmax_row(ks_ptr + n * C, ks_ptr + n * C, C, channel_scale, BLOCK_C, ACC)
    scaled_softmax_row(kt_ptr + n * C, kt_ptr + n * C, C, channel_scale, BLOCK_C, ACC)


@triton.jit
def _finalize_kernel(t_ch_ptr, fg_ptr, bg_ptr, att_z_ptr, att_part_ptr, sq_part_ptr, N, C, HW, tasks,
                     alpha: tl.float64, beta: tl.float64, gamma: tl.float64, loss_ptr, terms_ptr, sq_ptr,
                     BLOCK: tl.constexpr, ACC: tl.constexpr):
    alpha, beta, gamma, C = acc_scalar(alpha, ACC), acc_scalar(beta, ACC), acc_scalar(gamma, ACC), size64(C)
    offs = tl.arange(0, BLOCK)
    l_fg = tl.zeros([BLOCK], ACC)
    l_bg = tl.zeros([BLOCK], ACC)
    for n in range(0, N):
        f = tl.zeros([BLOCK], ACC)
        b = tl.zeros([BLOCK], ACC)
        for c0 in range(0, C, BLOCK):
            c = c0 + offs
            a = tl.load(t_ch_ptr + n * C + c, mask=c < C, other=0.0)
            f += a * tl.load(fg_ptr + n * C + c, mask=c < C, other=0.0)
            b += a * tl.load(bg_ptr + n * C + c, mask=c < C, other=0.0)
        pixel_norm = HW / tl.load(att_z_ptr + n)  # A_S^t = H*W exp(. - max) / z
        l_fg += f * pixel_norm
        l_bg += b * pixel_norm
    fg_term = tl.sum(l_fg, axis=0) / N
    bg_term = tl.sum(l_bg, axis=0) / N
    att_term = sum_column(att_part_ptr, N, 1, 0, BLOCK, ACC) / N
    tl.store(terms_ptr, fg_term)
    tl.store(terms_ptr + 1, bg_term)
    tl.store(terms_ptr + 2, att_term)
    tl.store(loss_ptr, weighted_loss(alpha, fg_term, beta, bg_term, gamma, att_term))
    tl.store(sq_ptr, sum_column(sq_part_ptr, tasks, 1, 0, BLOCK, ACC))


def _tiles(c, hw):
    block_hw, block_c = block_for(hw, 128), block_for(c, 32)
    return block_hw, block_c, triton.cdiv(hw, block_hw)


def _warps(acc):
    return 8 if acc == torch.float64 else 4  # float64 spills at 4 warps


def forward(student, teacher, fg, bg, weight_s, bias_s, weight_t, bias_t, temperature: float, alpha: float,
            beta: float, gamma: float):
    s, t = student.contiguous(), teacher.contiguous()
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)

    def new(*shape):
        return torch.zeros(shape, dtype=acc, device=s.device)

    loss, terms, diff_sq = new(), new(3), new()
    ctx_s, ctx_t, diff_sum, t_channel, channel_att = (new(n, c) for _ in range(5))
    t_spatial, pixel_att, probs_s, probs_t = (new(n, h, w) for _ in range(4))
    outputs = (loss, terms, ctx_s, ctx_t, diff_sq, diff_sum, t_spatial, t_channel, pixel_att, channel_att, probs_s,
               probs_t)
    if n == 0:
        return outputs
    block_hw, block_c, tiles = _tiles(c, hw)
    tasks = n * tiles
    s_spatial, s_channel = new(n, hw), new(n, c)
    part, sq_part = new(tasks, len(FEATURE_PASS_PARTIALS), c), new(tasks)
    stats = new(tasks, 2 * len(FEATURE_PASS_SOFTMAXES))
    fg_c, bg_c, gc_s, gc_t, att_z = new(n, c), new(n, c), new(n, 2), new(n, 2), new(n)
    ACC = tl_acc(acc)
    att_scale = 1.0 / (c * temperature)  # the teacher pixel attention's logit scale
    _partial_kernel[(tiles, n)](s, t, fg.contiguous(), bg.contiguous(), weight_s.contiguous(), bias_s.contiguous(),
                                weight_t.contiguous(), bias_t.contiguous(), s_spatial, t_spatial, probs_s, probs_t,
                                part, stats, sq_part, c, hw, tiles, att_scale, BLOCK_C=block_c,
                                BLOCK_HW=block_hw, ACC=ACC, num_warps=_warps(acc))
    merge_c = block_for(c, 128)
    _merge_kernel[(n, triton.cdiv(c, merge_c))](part, stats, s_channel, t_channel, diff_sum, fg_c, bg_c, ctx_s, ctx_t,
                                                gc_s, gc_t, att_z, c, tiles, att_scale, BLOCK_T=block_for(tiles, 1024),
                                                BLOCK_C=merge_c, ACC=ACC)
    _masks_kernel[(n,)](s_spatial, t_spatial, s_channel, t_channel, c, hw, 1.0 / (c * temperature),
                        1.0 / (hw * temperature), BLOCK_HW=block_for(hw, 1024), BLOCK_C=block_for(c, 1024), ACC=ACC)
    att_part = new(n)
    attention_kernel[(n,)](s_spatial, t_spatial, s_channel, t_channel, pixel_att, channel_att, att_part, c, hw,
                            1.0 / n, 1.0 / temperature, BLOCK_HW=block_for(hw, 1024), BLOCK_C=block_for(c, 1024),
                            ACC=ACC)
    _finalize_kernel[(1,)](t_channel, fg_c, bg_c, att_z, att_part, sq_part, n, c, hw, tasks, alpha, beta, gamma, loss,
                           terms, diff_sq, BLOCK=block_for(max(c, n), 1024), ACC=ACC)
    block = block_for(hw, 1024)
    for probs, gc_stats in ((probs_s, gc_s), (probs_t, gc_t)):
        probs_kernel[(triton.cdiv(hw, block), n)](probs, gc_stats, hw, BLOCK=block)
    return outputs


@triton.jit
def _grad_kernel(grads_ptr, g_s_ptr, g_t_ptr, shift_ptr, s_ptr, t_ptr, fg_ptr, bg_ptr, ws_ptr, ctx_s_ptr, ctx_t_ptr,
                 t_sp_ptr, pixel_ptr, p_s_ptr, p_t_ptr, t_ch_ptr, channel_ptr, out_ptr, dw_s_ptr, dw_t_ptr, C, HW,
                 tiles, two_over_n: tl.float64, alpha: tl.float64, beta: tl.float64, gamma: tl.float64,
                 BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, ACC: tl.constexpr):
    two_over_n, alpha, beta, gamma = (acc_scalar(two_over_n, ACC), acc_scalar(alpha, ACC), acc_scalar(beta, ACC),
                                      acc_scalar(gamma, ACC))
    tile = program_id64(0)
    n = program_id64(1)
    j = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    j_ok = j < HW
    # grads_ptr: (grad_loss, grad_terms[3], grad_diff_sq), read on the device (no host sync).
    gl = tl.load(grads_ptr)
    c_fg = alpha * gl + tl.load(grads_ptr + 1)
    c_bg = beta * gl + tl.load(grads_ptr + 2)
    c_att = gamma * gl + tl.load(grads_ptr + 3)
    diff_coef = 2.0 * tl.load(grads_ptr + 4)
    u_s = tl.zeros([BLOCK_HW], ACC)
    u_t = tl.zeros([BLOCK_HW], ACC)
    ubar_s = tl.zeros([BLOCK_C], ACC)
    ubar_t = tl.zeros([BLOCK_C], ACC)
    for c0 in range(0, size64(C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        both = c_ok[:, None] & j_ok[None, :]
        offsets = (n * C + c[:, None]) * HW + j[None, :]
        gs = tl.load(g_s_ptr + n * C + c, mask=c_ok, other=0.0)
        gt = tl.load(g_t_ptr + n * C + c, mask=c_ok, other=0.0)
        ubar_s += gs * tl.load(ctx_s_ptr + n * C + c, mask=c_ok, other=0.0)
        ubar_t += gt * tl.load(ctx_t_ptr + n * C + c, mask=c_ok, other=0.0)
        u_s += tl.sum(gs[:, None] * tl.load(s_ptr + offsets, mask=both, other=0.0).to(ACC), axis=0)
        u_t += tl.sum(gt[:, None] * tl.load(t_ptr + offsets, mask=both, other=0.0).to(ACC), axis=0)
    p_s = tl.load(p_s_ptr + n * HW + j, mask=j_ok, other=0.0)
    p_t = tl.load(p_t_ptr + n * HW + j, mask=j_ok, other=0.0)
    dl_s = p_s * (u_s - tl.sum(ubar_s, axis=0))
    dl_t = p_t * (u_t - tl.sum(ubar_t, axis=0))
    mask_coef = two_over_n * (c_fg * tl.load(fg_ptr + n * HW + j, mask=j_ok, other=0.0)
                              + c_bg * tl.load(bg_ptr + n * HW + j, mask=j_ok, other=0.0))
    spatial = tl.load(t_sp_ptr + n * HW + j, mask=j_ok, other=0.0)
    pixel_att = weighted(c_att, tl.load(pixel_ptr + n * HW + j, mask=j_ok, other=0.0))
    for c0 in range(0, size64(C), BLOCK_C):  # the tile is in cache now
        c, c_ok, both, offsets, x, y = _load_chunk(s_ptr, t_ptr, n, c0, j, j_ok, C, HW, BLOCK_C, ACC)
        channel_weight = tl.load(t_ch_ptr + n * C + c, mask=c_ok, other=0.0)
        channel_att = weighted(c_att, tl.load(channel_ptr + n * C + c, mask=c_ok, other=0.0))
        shift = tl.load(shift_ptr + n * C + c, mask=c_ok, other=0.0)
        gs = tl.load(g_s_ptr + n * C + c, mask=c_ok, other=0.0)
        ws = tl.load(ws_ptr + c, mask=c_ok, other=0.0)
        sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
        grad = (weighted(mask_coef[None, :], spatial[None, :] * channel_weight[:, None] * (x - y)) + diff_coef * (x - y)
                + sign * (pixel_att[None, :] + channel_att[:, None]) + shift[:, None]
                + p_s[None, :] * gs[:, None] + ws[:, None] * dl_s[None, :])
        tl.store(out_ptr + offsets, grad.to(out_ptr.dtype.element_ty), mask=both)
        tl.store(dw_s_ptr + (n * tiles + tile) * C + c, tl.sum(x * dl_s[None, :], axis=1), mask=c_ok)
        tl.store(dw_t_ptr + (n * tiles + tile) * C + c, tl.sum(y * dl_t[None, :], axis=1), mask=c_ok)


def backward(grad_loss, grad_terms, grad_ctx_s, grad_ctx_t, grad_diff_sq, grad_diff_sum, student, teacher, fg, bg,
             weight_s, weight_t, ctx_s, ctx_t, t_spatial, t_channel, pixel_att, channel_att, probs_s, probs_t,
             alpha: float, beta: float, gamma: float):
    s, t = student.contiguous(), teacher.contiguous()
    out = torch.empty_like(s)
    grad_ws, grad_wt = torch.zeros_like(weight_s), torch.zeros_like(weight_t)
    if s.numel() == 0:
        return out, grad_ws, grad_wt
    n, c, h, w = s.shape
    hw = h * w
    acc = acc_dtype(s.dtype)
    grad_ctx_s, grad_ctx_t, grad_diff_sum = (g.to(acc).contiguous() for g in (grad_ctx_s, grad_ctx_t, grad_diff_sum))
    scalars = torch.cat([g.to(acc).reshape(-1) for g in (grad_loss, grad_terms, grad_diff_sq)])
    t_spatial, t_channel, pixel_att, channel_att, probs_s, probs_t = (
        x.contiguous() for x in (t_spatial, t_channel, pixel_att, channel_att, probs_s, probs_t))
    block_hw, block_c, tiles = _tiles(c, hw)
    dw_s, dw_t = (torch.empty((n * tiles, c), dtype=acc, device=s.device) for _ in range(2))
    _grad_kernel[(tiles, n)](scalars, grad_ctx_s, grad_ctx_t, grad_diff_sum, s, t, fg.contiguous(), bg.contiguous(),
                             weight_s.contiguous(), ctx_s.contiguous(), ctx_t.contiguous(), t_spatial, pixel_att,
                             probs_s, probs_t, t_channel, channel_att, out, dw_s, dw_t, c, hw, tiles, 2.0 / n, alpha,
                             beta, gamma, BLOCK_C=block_c, BLOCK_HW=block_hw, ACC=tl_acc(acc), num_warps=_warps(acc))
    block = block_for(c, 256)
    for part, total in ((dw_s, grad_ws), (dw_t, grad_wt)):
        sum_rows_kernel[(triton.cdiv(c, block),)](part, total, n * tiles, c, BLOCK_C=block, ACC=tl_acc(acc))
    return out, grad_ws, grad_wt
