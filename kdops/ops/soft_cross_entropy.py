"""kdops.soft_cross_entropy: Chen 2017's class-weighted soft cross-entropy, hard CE fused (docs/math.md §7)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._layout import SOFT_CE_STATS, acc_dtype
from kdops._registry import acc_empty
from kdops.reference import soft_cross_entropy as reference

OP = "soft_cross_entropy"


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor? class_weight, Tensor? target, float temperature, float mu, "
        "int ignore_index) -> (Tensor loss, Tensor norm, Tensor row_stats)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student),
                    acc_empty(a.student, a.student.shape[0], len(SOFT_CE_STATS))),
    reference=reference.soft_cross_entropy,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor? class_weight, Tensor? target, Tensor norm, "
                    "Tensor row_stats, float temperature, float mu, int ignore_index) -> Tensor",
    saved=("student", "teacher", "class_weight", "target", "norm", "row_stats"),
    backward=_registry.teacher_gets_no_gradient(OP, "teacher_logits")))


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, *, class_weight: Optional[Tensor] = None,
                       target: Optional[Tensor] = None, temperature: float = 1.0, mu: float = 0.0,
                       ignore_index: int = -1, backend: Optional[str] = None) -> Tensor:
    """Class-weighted soft cross-entropy of Chen et al. 2017 (eq. 2-3), optionally fused with the hard CE.

    soft_i = -sum_c w_c softmax(z_t / T)[c] log_softmax(z_s / T)[c] and, with a target,
    L = mean over kept rows of mu * CE(z_s, y_i) + (1 - mu) * soft_i (the hard CE at temperature 1,
    unweighted, as in Faster R-CNN); without a target L = mean_i soft_i and mu is unused.
    There is no T^2 factor (the paper uses T = 1).

    Args:
        student_logits, teacher_logits: (rows, classes) logits of the same shape, dtype and device.
            Class 0 is the background (torchvision convention). The teacher gets no gradient: it
            must not require grad (detach it).
        class_weight: optional (classes,) constant weights w_c; None means all ones. Chen 2017 uses
            w_0 = 1.5 and w_c = 1 otherwise (kdops.nn.DistillCrossEntropy builds that vector).
        target: optional (rows,) integer labels. Rows labelled ignore_index are skipped and the mean
            is over the rows kept (0 if none is kept), computed on the device without a host sync.
            A label outside [0, classes) that is not ignore_index raises on the "cpu" backend and
            makes the loss NaN on the others ("cuda", "triton", "reference"), which cannot raise
            without a host sync.
        temperature: T > 0 (the paper finds T = 1 best for detection).
        mu: weight of the hard loss, in [0, 1].
        ignore_index: label of rows to skip.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 logits). NaN logits in a kept row make it NaN.
    """
    _checks.float_tensor(student_logits, OP, "student_logits")
    _checks.tensor(teacher_logits, OP, "teacher_logits")
    if student_logits.dim() != 2:
        raise ValueError(f"kdops.{OP}: student_logits must be a 2-D (rows, classes) tensor, "
                         f"got shape {tuple(student_logits.shape)}")
    _checks.same_layout(student_logits, teacher_logits, OP, "student_logits", "teacher_logits")
    _checks.detached(teacher_logits, OP, "teacher_logits")
    rows, classes = student_logits.shape
    if classes == 0:
        raise ValueError(f"kdops.{OP}: the logits need at least one class, got shape {tuple(student_logits.shape)}")
    temperature = _checks.temperature(temperature, OP)
    mu = _checks.unit_interval(mu, OP, "mu")
    ignore_index = _checks.integer(ignore_index, OP, "ignore_index")
    acc = acc_dtype(student_logits.dtype)
    if class_weight is not None:
        class_weight = _checks.weight_vector(class_weight, classes, student_logits, acc, OP, "class_weight")
    if target is not None:
        target = _checks.labels(target, (rows,), student_logits, OP, "target")
    which = _backend.resolve(OP, student_logits.device, backend)
    return OP_SPEC(which, student=student_logits, teacher=teacher_logits, class_weight=class_weight, target=target,
                temperature=temperature, mu=mu, ignore_index=ignore_index)[0]
