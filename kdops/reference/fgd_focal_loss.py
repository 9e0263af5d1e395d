"""FGD focal loss, docs/math.md §3: teacher attention weights the feature loss, student attention enters the
attention loss only. L = alpha L_fg + beta L_bg + gamma L_att."""

import torch

from kdops._layout import to_acc
from kdops.reference.attention_masks import attention_masks


def fgd_focal_terms(student, teacher, fg, bg, temperature: float = 0.5):
    """(3,) tensor: the unweighted (L_fg, L_bg, L_att), float32 (float64 for float64 features)."""
    n = student.shape[0]
    if n == 0:  # zeros plus the sum of no elements: still 0, but connected to the graph (zero gradients)
        return to_acc(student).new_zeros(3) + to_acc(student).sum()
    s_sp, s_ch = attention_masks(student, temperature=temperature)
    t_sp, t_ch = attention_masks(teacher, temperature=temperature)
    d = to_acc(student) - to_acc(teacher)
    weighted = d * d * t_sp[:, None] * t_ch[:, :, None, None]
    l_fg = (weighted * fg.to(d.dtype)[:, None]).sum() / n
    l_bg = (weighted * bg.to(d.dtype)[:, None]).sum() / n
    l_att = ((s_ch - t_ch).abs().sum() + (s_sp - t_sp).abs().sum()) / n
    return torch.stack([l_fg, l_bg, l_att])


def fgd_focal_loss(student, teacher, *, fg, bg, temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4,
                   gamma: float = 5e-4):
    """Returns (loss, terms)."""
    terms = fgd_focal_terms(student, teacher, fg, bg, temperature)
    return alpha * terms[0] + beta * terms[1] + gamma * terms[2], terms


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
    pixel_weight = 2.0 / n * (coef[0] * fg + coef[1] * bg) * teacher_spatial
    feature = pixel_weight[:, None] * teacher_channel[:, :, None, None] * (s - t)
    attention = coef[2] * torch.sign(s) * (pixel_att_grad[:, None] + channel_att_grad[:, :, None, None])
    return (feature + attention).to(student.dtype)
