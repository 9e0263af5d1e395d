"""GcBlock context pooling, docs/math.md §4: context[n,c] = sum_j softmax_j(w . F[n,:,j] + b) F[n,c,j]."""

import torch

from kdops._layout import to_acc


def gc_context(feat, weight, bias):
    """Returns (context (N, C), probs (N, H, W)) in float32 (float64 for float64 features).
    weight: (C,), bias: (1,)."""
    f = to_acc(feat)
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    logits = torch.einsum("ncj,c->nj", flat, weight.to(f.dtype)) + bias.to(f.dtype)
    probs = torch.softmax(logits, dim=1)
    context = torch.einsum("ncj,nj->nc", flat, probs)
    return context, probs.reshape(n, h, w)


def gc_context_backward(grad_context, feat, weight, context, probs, need_feat: bool = True):
    """dF[n,c,j] = p_j g_c + w_c dl_j, dw_c = sum_{n,j} dl_j F[n,c,j], with dl_j = p_j (u_j - ubar),
    u_j = sum_c g_c F[n,c,j] and ubar = sum_c g_c context_c. The bias gradient is zero."""
    f = to_acc(feat)
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    g = grad_context.to(f.dtype)
    p = probs.reshape(n, h * w).to(f.dtype)
    u = torch.einsum("ncj,nc->nj", flat, g)
    ubar = (g * context.to(f.dtype)).sum(dim=1, keepdim=True)
    dl = p * (u - ubar)
    grad_weight = torch.einsum("ncj,nj->c", flat, dl)
    if not need_feat:
        return feat.new_empty(0), grad_weight
    grad_feat = p[:, None, :] * g[:, :, None] + weight.to(f.dtype)[None, :, None] * dl[:, None, :]
    return grad_feat.reshape(n, c, h, w).to(feat.dtype), grad_weight
