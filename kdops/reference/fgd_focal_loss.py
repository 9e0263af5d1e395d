"""FGD focal loss, docs/math.md §3: teacher attention weights the feature loss, student attention enters the
attention loss only. L = alpha L_fg + beta L_bg + gamma L_att. A pixel where fg (bg) is 0 adds exactly 0 to
L_fg (L_bg), and a term of weight 0 adds exactly 0 to L, whatever the student holds there (docs/math.md §0)."""

import torch

from kdops._layout import to_acc
from kdops.reference._common import without_weightless
from kdops.reference.attention_masks import attention_masks


def _masked_squares(mask, d, weight):
    """sum mask * weight * d^2 over the pixels where the (N, H, W) mask is not 0."""
    m = mask.to(d.dtype)[:, None]
    d = without_weightless(d, m)
    return (m * weight * d * d).sum()


def _terms(student, teacher, fg, bg, temperature: float):
    """The unweighted L_fg, L_bg, L_att as 0-dim tensors."""
    n = student.shape[0]
    if n == 0:  # the sum of no elements: 0, but connected to the graph (zero gradients)
        zero = to_acc(student).sum()
        return zero, zero, zero
    s_sp, s_ch = attention_masks(student, temperature=temperature)
    t_sp, t_ch = attention_masks(teacher, temperature=temperature)
    d = to_acc(student) - to_acc(teacher)
    weight = t_sp[:, None] * t_ch[:, :, None, None]
    l_fg = _masked_squares(fg, d, weight) / n
    l_bg = _masked_squares(bg, d, weight) / n
    l_att = ((s_ch - t_ch).abs().sum() + (s_sp - t_sp).abs().sum()) / n
    return l_fg, l_bg, l_att


def fgd_focal_terms(student, teacher, fg, bg, temperature: float = 0.5):
    """(3,) tensor: the unweighted (L_fg, L_bg, L_att), float32 (float64 for float64 features)."""
    return torch.stack(_terms(student, teacher, fg, bg, temperature))


def fgd_focal_loss(student, teacher, *, fg, bg, temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4,
                   gamma: float = 5e-4):
    """Returns (loss, terms). The loss is built from the terms of non-zero weight only, so a term of weight 0 is
    not on its graph: its value and its gradient cannot reach the loss."""
    terms = _terms(student, teacher, fg, bg, temperature)
    used = [w * term for w, term in zip((alpha, beta, gamma), terms) if w != 0]
    loss = sum(used[1:], used[0]) if used else to_acc(student)[:0].sum()
    return loss, torch.stack(terms)


def attention_grads(student, teacher, temperature: float):
    """What the kernels save for the backward: the teacher masks and dL_att/d|S| split as
    pixel_att_grad[n,h,w] + channel_att_grad[n,c] (g_m / C and g_k / (H*W) of docs/math.md §3)."""
    n, c, h, w = student.shape
    s_sp, s_ch = attention_masks(student, temperature=temperature)
    t_sp, t_ch = attention_masks(teacher, temperature=temperature)
    s_sp, t_sp = s_sp.reshape(n, h * w), t_sp.reshape(n, h * w)

    def softmax_grad(a_s, a_t):
        e = torch.sign(a_s - a_t) / n
        return a_s * (e - (a_s * e).mean(dim=1, keepdim=True)) / temperature

    pixel = (softmax_grad(s_sp, t_sp) / c).reshape(n, h, w)
    channel = softmax_grad(s_ch, t_ch) / (h * w)
    return t_sp.reshape(n, h, w), t_ch, pixel, channel


def fgd_focal_loss_backward(grad_loss, grad_terms, student, teacher, fg, bg, teacher_spatial, teacher_channel,
                            pixel_att_grad, channel_att_grad, alpha: float, beta: float, gamma: float):
    """dL/dS = 2/N (c_fg M_fg + c_bg M_bg) A_S^t A_C^t (S - T) + c_att sign(S) (pixel_att + channel_att),
    with c_fg = alpha * grad_loss + grad_terms[0] (likewise c_bg, c_att)."""
    n = student.shape[0]
    s, t = to_acc(student), to_acc(teacher)
    coef = grad_loss.to(s.dtype) * torch.tensor([alpha, beta, gamma], dtype=s.dtype, device=s.device)
    coef = coef + grad_terms.to(s.dtype)
    mask_coef = (2.0 / n * (coef[0] * fg + coef[1] * bg))[:, None]
    feature = mask_coef * teacher_spatial[:, None] * teacher_channel[:, :, None, None] * (s - t)
    attention = coef[2] * torch.sign(s) * (pixel_att_grad[:, None] + channel_att_grad[:, :, None, None])
    # a pixel whose mask coefficient is 0, and a zero attention coefficient, add exactly 0
    return (without_weightless(feature, mask_coef) + without_weightless(attention, coef[2])).to(student.dtype)
