"""kdops.ld_loss: localization distillation (Zheng et al. 2022) on box-edge distributions (docs/math.md §11)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import CWD_STATS, LD_NORMALIZERS, acc_dtype
from kdops._registry import acc_empty
from kdops.reference import ld_loss as reference

OP = "ld_loss"


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor? weight, float temperature, str normalize) -> (Tensor loss, "
        "Tensor norm, Tensor row_stats)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student),
                    acc_empty(a.student, a.student.shape[0], len(CWD_STATS))),
    reference=reference.ld_loss,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor? weight, Tensor norm, Tensor row_stats, "
                    "float temperature) -> Tensor",
    saved=("student", "teacher", "weight", "norm", "row_stats"),
    backward=_registry.teacher_gets_no_gradient(OP, "teacher_logits")))


def ld_loss(student_logits: Tensor, teacher_logits: Tensor, *, weight: Optional[Tensor] = None,
            temperature: float = 10.0, normalize: str = "mean", backend: Optional[str] = None) -> Tensor:
    """Localization distillation (LD) of Zheng et al. 2022 on box-edge distributions, one edge per row.

    l_i = T^2 / n * KL(softmax(z_t[i] / T) || softmax(z_s[i] / T)) over each row's n bins (the official
    code's KL averaged over the bins, times T^2), and L = sum_i w_i l_i / Z. The official LD head divides the
    sum by a constant avg_factor: take normalize="sum" and divide, or use kdops.nn.LDLoss(avg_factor=...)
    (docs/math.md §11).

    Args:
        student_logits, teacher_logits: (rows, n) distribution logits of the same shape, dtype and device,
            n >= 1 bins (GFL: reg_max + 1 = 17; Ultralytics' DFL: reg_max = 16). Rows are box edges, e.g.
            anchors x 4. The teacher gets no gradient: it must not require grad (detach it).
        weight: optional (rows,) constant per-row weight w_i (None: all 1), e.g. the official code's
            classification score of each positive anchor, repeated on its 4 edges, and 0 elsewhere. A row
            of weight 0 adds exactly 0 to the loss and its gradient, whatever its logits hold (they are
            not read), so unused rows can stay in the tensor.
        temperature: T, a finite number >= 1e-30 (the official code: 10).
        normalize: Z = "sum" (1), "mean" (rows, weight-0 rows included: mmdet's reduction="mean") or "weight"
            (the sum of the weights: the weighted mean, as GFL and Ultralytics normalise their DFL). Z = 0 gives
            a loss of 0.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 logits). NaN logits in a row of non-zero weight make it NaN.
    """
    _checks.float_tensor(student_logits, OP, "student_logits")
    _checks.tensor(teacher_logits, OP, "teacher_logits")
    if student_logits.dim() != 2:
        raise ValueError(f"kdops.{OP}: student_logits must be a 2-D (rows, bins) tensor, "
                         f"got shape {tuple(student_logits.shape)}")
    _checks.same_layout(student_logits, teacher_logits, OP, "student_logits", "teacher_logits")
    _checks.detached(teacher_logits, OP, "teacher_logits")
    rows, bins = student_logits.shape
    if bins == 0:
        raise ValueError(f"kdops.{OP}: the logits need at least one bin, got shape {tuple(student_logits.shape)}")
    temperature = _checks.temperature(temperature, OP)
    _checks.choice(normalize, LD_NORMALIZERS, OP, "normalize")
    if weight is not None:
        weight = _checks.weight_vector(weight, rows, student_logits, acc_dtype(student_logits.dtype), OP, "weight")
    which = _backend.resolve(OP, student_logits.device, backend)
    return OP_SPEC(which, student=student_logits, teacher=teacher_logits, weight=weight, temperature=temperature,
                   normalize=normalize)[0]
