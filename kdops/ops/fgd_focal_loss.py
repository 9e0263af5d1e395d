"""kdops.fgd_focal_loss: the fused FGD focal loss (docs/math.md §3)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import acc_dtype
from kdops._registry import acc_empty
from kdops.reference import fgd_focal_loss as reference

OP = "fgd_focal_loss"


def _fake(a):
    n, c, h, w = a.student.shape
    return (acc_empty(a.student), acc_empty(a.student, 3), acc_empty(a.student, n, h, w), acc_empty(a.student, n, c),
            acc_empty(a.student, n, h, w), acc_empty(a.student, n, c))


def _backward(b):
    _checks.no_grad_needed("teacher" in b.need, OP, "teacher", _checks.FGD_TEACHER_WHY)
    if "student" not in b.need:
        return {}  # the box masks are constants
    like = b.saved.teacher_spatial
    # An unused output arrives as None; its gradient is zero.
    grad_loss = like.new_zeros(()) if b.grads.loss is None else b.grads.loss.to(like.dtype)
    grad_terms = like.new_zeros(3) if b.grads.terms is None else b.grads.terms.to(like.dtype)
    return {"student": b.run(grad_loss=grad_loss, grad_terms=grad_terms)}


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor fg, Tensor bg, float temperature, float alpha, float beta, "
        "float gamma) -> (Tensor loss, Tensor terms, Tensor teacher_spatial, Tensor teacher_channel, "
        "Tensor pixel_att_grad, Tensor channel_att_grad)",
    fake=_fake, reference=reference.fgd_focal_loss,
    backward_schema="(Tensor grad_loss, Tensor grad_terms, Tensor student, Tensor teacher, Tensor fg, Tensor bg, "
                    "Tensor teacher_spatial, Tensor teacher_channel, Tensor pixel_att_grad, Tensor channel_att_grad, "
                    "float alpha, float beta, float gamma) -> Tensor",
    saved=("student", "teacher", "fg", "bg", "teacher_spatial", "teacher_channel", "pixel_att_grad",
           "channel_att_grad"),
    non_differentiable=("teacher_spatial", "teacher_channel", "pixel_att_grad", "channel_att_grad"),
    backward=_backward))


def check_args(op, student, teacher, fg, bg, temperature, alpha, beta, gamma):
    """Checks the focal-loss arguments of `op`; returns (fg, bg) in the accumulation dtype and the numbers."""
    _checks.feature(student, op, "student")
    _checks.tensor(teacher, op, "teacher")
    _checks.same_layout(student, teacher, op, "student", "teacher")
    _checks.detached(teacher, op, "teacher", _checks.FGD_TEACHER_WHY)
    if student.shape[1] == 0 or student.shape[2] * student.shape[3] == 0:
        raise ValueError(f"kdops.{op}: student must have C >= 1 and H*W >= 1, got shape {tuple(student.shape)}")
    acc = acc_dtype(student.dtype)
    fg = _checks.pixel_map(fg, student, op, "fg", dtype=acc)
    bg = _checks.pixel_map(bg, student, op, "bg", dtype=acc)
    temperature = _checks.temperature(temperature, op)
    alpha, beta, gamma = (_checks.number(v, op, name) for v, name in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma")))
    return fg, bg, temperature, alpha, beta, gamma


def fgd_focal_loss(student: Tensor, teacher: Tensor, *, fg: Tensor, bg: Tensor, temperature: float = 0.5,
                   alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 5e-4, return_terms: bool = False,
                   backend: Optional[str] = None):
    """FGD focal loss: alpha * L_fg + beta * L_bg + gamma * L_att (FGD eq. 9-11, docs/math.md §3).

    L_fg = sum M_fg A_S^t A_C^t (S - T)^2 / N, L_bg likewise with M_bg, and
    L_att = (sum |A_C^s - A_C^t| + sum |A_S^s - A_S^t|) / N, where A^t / A^s are the teacher's / the
    student's attention masks (kdops.attention_masks). Fused: no (N, C, H, W) intermediate exists
    besides the gradient.

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device (the student
            already adapted to the teacher's channels). The teacher must not require grad (its
            masks are constants of the loss): pass teacher.detach().
        fg, bg: (N, H, W) masks from kdops.box_masks (constants: they must not require grad).
        temperature: attention temperature (> 0).
        alpha, beta, gamma: weights of L_fg, L_bg, L_att. The defaults are FGD's RetinaNet values;
            kdops.nn.FGDLoss.preset has the other families'.
        return_terms: also return the unweighted (L_fg, L_bg, L_att) as a (3,) tensor (differentiable).
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        The 0-dim loss, float32 (float64 for float64 features); with return_terms, (loss, terms).
        An empty batch (N = 0) gives 0.
    """
    fg, bg, temperature, alpha, beta, gamma = check_args(OP, student, teacher, fg, bg, temperature, alpha, beta, gamma)
    which = _backend.resolve(OP, student.device, backend)
    loss, terms = OP_SPEC(which, student=student, teacher=teacher, fg=fg, bg=bg, temperature=temperature, alpha=alpha,
                       beta=beta, gamma=gamma)[:2]
    return (loss, terms) if return_terms else loss
