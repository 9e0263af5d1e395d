"""Triton kernels shared by the FGD ops: fgd_focal_loss and fgd_feature_pass (the weighted terms, the attention loss
and its gradient coefficients), gc_context and fgd_feature_pass (the merge of per-tile online softmaxes, the GcBlock
softmax and the weight-gradient sum)."""

import triton
import triton.language as tl

from kdops.triton._common import acc_scalar, program_id64, size64, weighted
from kdops.triton._reduce import kahan_add, kahan_total


@triton.jit
def weighted_loss(alpha, l_fg, beta, l_bg, gamma, l_att):
    """loss = alpha * L_fg + beta * L_bg + gamma * L_att, a term of weight 0 adding exactly 0 (focal::weighted_loss)."""
    return weighted(alpha, l_fg) + weighted(beta, l_bg) + weighted(gamma, l_att)


@triton.jit
def _l1_softmax_grad_row(s_ptr, t_ptr, out_ptr, length, inv_n, inv_temp, post_scale, BLOCK: tl.constexpr,
                         ACC: tl.constexpr):
    """Returns sum |a_s - a_t| and writes out = d(sum |a_s - a_t| / N)/d(logits) * post_scale through
    a_s = length * softmax(logits / temp)."""
    length = size64(length)
    offs = tl.arange(0, BLOCK)
    l1 = tl.zeros([BLOCK], ACC)
    l1_c = tl.zeros([BLOCK], ACC)
    weighted = tl.zeros([BLOCK], ACC)
    weighted_c = tl.zeros([BLOCK], ACC)
    for start in range(0, length, BLOCK):
        i = start + offs
        a = tl.load(s_ptr + i, mask=i < length, other=0.0)
        b = tl.load(t_ptr + i, mask=i < length, other=0.0)
        e = tl.where(a > b, 1.0, tl.where(a < b, -1.0, 0.0)) * inv_n
        l1, l1_c = kahan_add(l1, l1_c, tl.abs(a - b))
        weighted, weighted_c = kahan_add(weighted, weighted_c, a * e)
    mean = kahan_total(weighted, weighted_c) / length
    for start in range(0, length, BLOCK):
        i = start + offs
        a = tl.load(s_ptr + i, mask=i < length, other=0.0)
        b = tl.load(t_ptr + i, mask=i < length, other=0.0)
        e = tl.where(a > b, 1.0, tl.where(a < b, -1.0, 0.0)) * inv_n
        tl.store(out_ptr + i, inv_temp * a * (e - mean) * post_scale, mask=i < length)
    return kahan_total(l1, l1_c)


@triton.jit
def attention_kernel(s_sp_ptr, t_sp_ptr, s_ch_ptr, t_ch_ptr, pixel_ptr, channel_ptr, att_part_ptr, C, HW,
                     inv_n: tl.float64, inv_temp: tl.float64, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC: tl.constexpr):
    n = program_id64(0)
    inv_n, inv_temp = acc_scalar(inv_n, ACC), acc_scalar(inv_temp, ACC)
    # 1.0 / HW on an int argument would be a float32 division
    l1 = _l1_softmax_grad_row(s_ch_ptr + n * C, t_ch_ptr + n * C, channel_ptr + n * C, C, inv_n, inv_temp,
                              1.0 / tl.cast(HW, ACC), BLOCK_C, ACC)
    l1 += _l1_softmax_grad_row(s_sp_ptr + n * HW, t_sp_ptr + n * HW, pixel_ptr + n * HW, HW, inv_n, inv_temp,
                               1.0 / tl.cast(C, ACC), BLOCK_HW, ACC)
    tl.store(att_part_ptr + n, l1)


@triton.jit
def merged_max_and_sum(max_ptr, sum_ptr, stride, tiles, BLOCK_T: tl.constexpr, ACC: tl.constexpr, scale=1.0):
    """An image's softmax max and normaliser from its tiles' (max, sum) pairs, at max_ptr and sum_ptr + t * stride;
    the maxima are of the unscaled logits, whose softmax is of logits * scale (rescaled by exp((m - max) * scale))."""
    t = tl.arange(0, BLOCK_T)
    mx_acc = tl.full([BLOCK_T], float("-inf"), ACC)
    for t0 in range(0, size64(tiles), BLOCK_T):
        mx_acc = tl.maximum(mx_acc, tl.load(max_ptr + (t0 + t) * stride, mask=t0 + t < tiles, other=float("-inf")))
    mx = tl.max(mx_acc, axis=0)
    z_acc = tl.zeros([BLOCK_T], ACC)
    z_comp = tl.zeros([BLOCK_T], ACC)
    for t0 in range(0, size64(tiles), BLOCK_T):
        ok = t0 + t < tiles
        m = tl.load(max_ptr + (t0 + t) * stride, mask=ok, other=0.0)
        z = tl.load(sum_ptr + (t0 + t) * stride, mask=ok, other=0.0)
        z_acc, z_comp = kahan_add(z_acc, z_comp, tl.where(ok, z * tl.exp((m - mx) * scale), 0.0))
    return mx, kahan_total(z_acc, z_comp)


@triton.jit
def probs_kernel(logit_ptr, stats_ptr, HW, BLOCK: tl.constexpr):
    n = program_id64(1)
    j = program_id64(0) * BLOCK + tl.arange(0, BLOCK)
    ok = j < HW
    mx = tl.load(stats_ptr + 2 * n)
    z = tl.load(stats_ptr + 2 * n + 1)
    logits = tl.load(logit_ptr + n * HW + j, mask=ok, other=0.0)
    tl.store(logit_ptr + n * HW + j, tl.exp(logits - mx) / z, mask=ok)


@triton.jit
def sum_rows_kernel(part_ptr, out_ptr, rows, C, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    c = program_id64(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    total = tl.zeros([BLOCK_C], ACC)
    comp = tl.zeros([BLOCK_C], ACC)
    for r in range(0, size64(rows)):  # r * C passes 2^31 - 1 on large maps (rows = N * tiles)
        total, comp = kahan_add(total, comp, tl.load(part_ptr + r * C + c, mask=c < C, other=0.0))
    tl.store(out_ptr + c, total - comp, mask=c < C)
