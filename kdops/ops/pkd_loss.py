"""kdops.pkd_loss: Pearson-correlation distillation (Cao et al. 2022, mmrazor's PKDLoss; docs/math.md §6)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import PKD_STATS, acc_dtype
from kdops._registry import acc_empty
from kdops.reference import pkd_loss as reference

OP = "pkd_loss"
# The same statistics seen from the teacher's side.
_SWAP_SIDES = [PKD_STATS.index(n) for n in ("mean_t", "std_t", "mean_s", "std_s", "squared_diff")]


def _backward(b):
    out = {}
    if "student" in b.need:
        out["student"] = b.run(grad=b.grads.loss)
    # The loss is symmetric in S and T: the teacher's gradient is the same formula, sides swapped.
    if "teacher" in b.need:
        s = b.saved
        out["teacher"] = b.run(grad=b.grads.loss, student=s.teacher, teacher=s.student,
                               channel_stats=s.channel_stats[:, _SWAP_SIDES].contiguous())
    return out


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher) -> (Tensor loss, Tensor channel_stats)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student, a.student.shape[1], len(PKD_STATS))),
    reference=reference.pkd_loss,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor channel_stats) -> Tensor",
    saved=("student", "teacher", "channel_stats"), backward=_backward))


def pkd_loss(student: Tensor, teacher: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Pearson-correlation distillation: standardise every channel of S and of T over (N, H, W)
    (mean, unbiased std + 1e-6, as mmrazor's PKDLoss), then L = mean((S' - T')^2) / 2, which is
    1 - the mean per-channel Pearson correlation (up to the epsilon and the (M-1)/M of the std).

    Args:
        student, teacher: (N, C, H, W) features of the same shape, dtype and device
            (resize the student first if the maps differ; mmrazor's resize_stu does that).
            Both may require grad: the loss is symmetric, and each gets its gradient.
            A channel with N*H*W = 1 has no unbiased std: the loss is NaN, as in torch.std.
            Empty features (e.g. N = 0) give a zero loss and zero gradients.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 inputs).
    """
    _checks.feature(student, OP, "student")
    _checks.tensor(teacher, OP, "teacher")
    _checks.same_layout(student, teacher, OP, "student", "teacher")
    if student.numel() == 0:  # nothing to correlate: a zero loss (a sum of no elements), zero gradients
        dtype = acc_dtype(student.dtype)
        return student.sum(dtype=dtype) + teacher.sum(dtype=dtype)
    which = _backend.resolve(OP, student.device, backend)
    return OP_SPEC(which, student=student, teacher=teacher)[0]
