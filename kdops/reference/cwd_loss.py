"""Channel-wise distillation (CWD, docs/math.md §6):
    L = tau^2 / (N*C) * sum_{n,c} KL(softmax_hw(T[n,c] / tau) || softmax_hw(S[n,c] / tau)).
"""

import torch

from kdops.reference._common import acc_dtype


def cwd_loss(student, teacher, tau: float = 1.0):
    dtype = acc_dtype(student)
    n, c, h, w = student.shape
    s = student.to(dtype).reshape(n * c, h * w) / tau
    t = teacher.to(dtype).reshape(n * c, h * w) / tau
    log_pt = torch.log_softmax(t, dim=1)
    kl = (log_pt.exp() * (log_pt - torch.log_softmax(s, dim=1))).sum()
    return kl * (tau * tau / max(n * c, 1))


def cwd_loss_backward(grad, student, teacher, tau: float):
    """dL/dS = grad * tau / (N*C) * (softmax_hw(S / tau) - softmax_hw(T / tau))."""
    dtype = acc_dtype(student)
    n, c, h, w = student.shape
    ps = torch.softmax(student.to(dtype).reshape(n * c, h * w) / tau, dim=1)
    pt = torch.softmax(teacher.to(dtype).reshape(n * c, h * w) / tau, dim=1)
    g = grad.to(dtype) * (tau / max(n * c, 1)) * (ps - pt)
    return g.reshape(student.shape).to(student.dtype)
