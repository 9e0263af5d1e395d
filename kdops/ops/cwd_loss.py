"""kdops.cwd_loss: channel-wise distillation (Shu et al. 2021; docs/math.md §6)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import CWD_STATS
from kdops._registry import acc_empty
from kdops.reference import cwd_loss as reference

OP = "cwd_loss"


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, float tau) -> (Tensor loss, Tensor row_stats)",
    fake=lambda a: (acc_empty(a.student),
                    acc_empty(a.student, a.student.shape[0] * a.student.shape[1], len(CWD_STATS))),
    reference=reference.cwd_loss,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor row_stats, float tau) -> Tensor",
    saved=("student", "teacher", "row_stats"), backward=_registry.teacher_gets_no_gradient(OP)))


def cwd_loss(student: Tensor, teacher: Tensor, *, tau: float = 1.0, backend: Optional[str] = None) -> Tensor:
    """Channel-wise distillation: each (n, c) channel's spatial map becomes a distribution,
    L = tau^2 / (N*C) * sum_{n,c} KL(softmax_hw(T[n,c] / tau) || softmax_hw(S[n,c] / tau)).

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device, H*W >= 1
            (the student already adapted to the teacher's channels). The teacher gets no gradient:
            it must not require grad.
        tau: temperature, a finite number >= 1e-30 (the CWD paper uses 1 for detection, 4 for
            segmentation). Any large tau is exact: the loss tends to half the variance of S - T per row.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 inputs); 0 for an empty batch.
    """
    _checks.feature(student, OP, "student")
    _checks.tensor(teacher, OP, "teacher")
    _checks.same_layout(student, teacher, OP, "student", "teacher")
    _checks.detached(teacher, OP, "teacher")
    if student.shape[2] * student.shape[3] == 0:
        raise ValueError(f"kdops.{OP}: student must have H*W >= 1, got shape {tuple(student.shape)}")
    tau = _checks.temperature(tau, OP, "tau")
    which = _backend.resolve(OP, student.device, backend)
    return OP_SPEC(which, student=student, teacher=teacher, tau=tau)[0]
