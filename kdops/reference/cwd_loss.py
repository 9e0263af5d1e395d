"""Channel-wise distillation (CWD, docs/math.md §6):
    L = tau^2 / (N*C) * sum_{n,c} KL(softmax_hw(T[n,c] / tau) || softmax_hw(S[n,c] / tau)).

A row whose spread is small against tau (every |z_j| / tau <= 1/8, z_j = (S_j - S_0) - (T_j - T_0)) has a KL
of second order in 1/tau, which the log-softmax difference loses to cancellation (float64 was wrong from
tau ~ 1e6, 0 at 1e20). Such a row uses the exact identity, with p_t the teacher softmax,
    tau^2 KL = M2 - v^2 h(u),  M1 = sum p_t z,  M2 = sum p_t z^2 r(z / tau),  v = M1 + M2 / tau,  u = v / tau,
    r(y) = (e^y - 1 - y) / y^2,  h(u) = (u - log1p(u)) / u^2
(short series, csrc/include/kdops/math/cwd_loss.h).
"""

import torch

from kdops._layout import acc_dtype

NEAR_BOUND = 0.125


def _series(x, coefficients):
    """sum_k coefficients[k] x^k (Horner)."""
    p = torch.zeros_like(x)
    for c in reversed(coefficients):
        p = c + x * p
    return p


def _factorial(k):
    out = 1.0
    for i in range(2, k + 1):
        out *= i
    return out


def _rows(student, teacher):
    """The (n, c) rows of both maps as (N*C, HW) tensors in the accumulation dtype, and max(N*C, 1)."""
    dtype = acc_dtype(student.dtype)
    n, c, h, w = student.shape
    return student.to(dtype).reshape(n * c, h * w), teacher.to(dtype).reshape(n * c, h * w), max(n * c, 1)


def _near(s, t, tau):
    """z of each row (zeros on the rows that are not near) and which rows are near, (rows, 1)."""
    z = (s - s[:, :1]) - (t - t[:, :1])
    near = z.detach().abs().amax(dim=1, keepdim=True) / tau <= NEAR_BOUND
    return torch.where(near, z, torch.zeros_like(z)), near


def _near_moments(pt, z, tau):
    m1 = (pt * z).sum(dim=1, keepdim=True)
    m2 = (pt * z * z * _series(z / tau, [1 / _factorial(k + 2) for k in range(11)])).sum(dim=1, keepdim=True)
    v = m1 + m2 / tau
    return m2, v, v / tau


def row_kl(s, t, tau: float):
    """tau^2 KL(softmax(t / tau) || softmax(s / tau)) of each row of two (rows, L) tensors: (rows,).
    Also the per-row term of ld_loss (docs/math.md §11)."""
    z, near = _near(s, t, tau)
    log_pt = torch.log_softmax(t / tau, dim=1)
    pt = log_pt.exp()
    far = (pt * (log_pt - torch.log_softmax(s / tau, dim=1))).sum(dim=1, keepdim=True) * tau * tau
    m2, v, u = _near_moments(pt, z, tau)
    u = torch.where(near, u, torch.zeros_like(u))
    close = m2 - v * v * _series(-u, [1 / (k + 2) for k in range(24)])
    return torch.where(near, close, far).squeeze(1)


def row_kl_grad(s, t, tau: float):
    """d row_kl / ds = tau (P_s - P_t), (rows, L); for a near row P_t w E(w / tau) with w = z - v log1p(u) / u
    and E(x) = (e^x - 1) / x."""
    z, near = _near(s, t, tau)
    ps = torch.softmax(s / tau, dim=1)
    pt = torch.softmax(t / tau, dim=1)
    _, v, u = _near_moments(pt, z, tau)
    u = torch.where(near, u, torch.zeros_like(u))
    w = z - v * _series(-u, [1 / (k + 1) for k in range(24)])
    close = pt * w * _series(w / tau, [1 / _factorial(k + 1) for k in range(14)])
    return torch.where(near, close, tau * (ps - pt))


def cwd_loss(student, teacher, *, tau: float = 1.0):
    s, t, rows = _rows(student, teacher)
    return row_kl(s, t, tau).sum() / rows


def cwd_loss_backward(grad, student, teacher, tau: float):
    """dL/dS = grad / (N*C) * tau (P_s - P_t) (row_kl_grad)."""
    s, t, rows = _rows(student, teacher)
    g = grad.to(s.dtype) / rows * row_kl_grad(s, t, tau)
    return g.reshape(student.shape).to(student.dtype)
