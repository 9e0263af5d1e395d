"""kdops.soft_binary_cross_entropy: the RPN-objectness (one logit per anchor) variant of Chen 2017's
weighted soft cross-entropy, hard BCE fused (docs/math.md §7)."""

from typing import Optional

from torch import Tensor

from kdops import _backend, _checks, _registry
from kdops._registry import acc_empty
from kdops.reference import soft_binary_cross_entropy as reference

OP = "soft_binary_cross_entropy"


OP_SPEC = _registry.define(_registry.Op(
    OP, "(Tensor student, Tensor teacher, Tensor? target, float pos_weight, float neg_weight, float temperature, "
        "float mu, int ignore_index) -> (Tensor loss, Tensor norm)",
    fake=lambda a: (acc_empty(a.student), acc_empty(a.student)),
    reference=reference.soft_binary_cross_entropy,
    backward_schema="(Tensor grad, Tensor student, Tensor teacher, Tensor? target, Tensor norm, float pos_weight, "
                    "float neg_weight, float temperature, float mu, int ignore_index) -> Tensor",
    saved=("student", "teacher", "target", "norm"), backward=_registry.teacher_gets_no_gradient(OP, "teacher_logits")))


def soft_binary_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, *, target: Optional[Tensor] = None,
                              pos_weight: float = 1.0, neg_weight: float = 1.5, temperature: float = 1.0,
                              mu: float = 0.0, ignore_index: int = -1, backend: Optional[str] = None) -> Tensor:
    """Weighted soft binary cross-entropy for RPN objectness (one logit per anchor, docs/math.md §7).

    With x = z_s / T and p_t = sigmoid(z_t / T), each anchor contributes
    soft = -(pos_weight * p_t * log sigmoid(x) + neg_weight * (1 - p_t) * log sigmoid(-x)),
    computed in a form that stays finite for any finite logit. With a target the hard BCE (at
    temperature 1, unweighted) is fused: mu * BCE(z_s, y) + (1 - mu) * soft. The loss is the mean
    over kept anchors (all anchors without a target; 0 if none is kept).

    Args:
        student_logits, teacher_logits: logits of any (equal) shape, e.g. (anchors,) or (N, A, H, W).
            The teacher gets no gradient: it must not require grad.
        target: optional integer labels of the logits' shape: 1 object, 0 background, ignore_index
            to skip (torchvision RPN labels, as `.long()`). Another value raises on the "cpu" backend
            and gives a NaN loss on the others (no host sync).
        pos_weight, neg_weight: w_1 (object) and w_0 (background); Chen 2017 weights the background
            class 1.5.
        temperature: T > 0.
        mu: weight of the hard loss, in [0, 1]; unused without a target.
        backend: None (automatic), "reference", "cpu", "cuda" or "triton".

    Returns:
        0-dim loss, float32 (float64 for float64 logits).
    """
    _checks.float_tensor(student_logits, OP, "student_logits")
    _checks.tensor(teacher_logits, OP, "teacher_logits")
    _checks.same_layout(student_logits, teacher_logits, OP, "student_logits", "teacher_logits")
    _checks.detached(teacher_logits, OP, "teacher_logits")
    pos_weight = _checks.number(pos_weight, OP, "pos_weight")
    neg_weight = _checks.number(neg_weight, OP, "neg_weight")
    temperature = _checks.temperature(temperature, OP)
    mu = _checks.unit_interval(mu, OP, "mu")
    ignore_index = _checks.integer(ignore_index, OP, "ignore_index")
    if target is not None:
        target = _checks.labels(target, student_logits.shape, student_logits, OP, "target")
    which = _backend.resolve(OP, student_logits.device, backend)
    return OP_SPEC(which, student=student_logits, teacher=teacher_logits, target=target, pos_weight=pos_weight,
                neg_weight=neg_weight, temperature=temperature, mu=mu, ignore_index=ignore_index)[0]
