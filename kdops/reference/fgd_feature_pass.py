"""FGD feature pass, docs/math.md §3-§4: the focal loss, both GcBlock contexts and the relation loss' feature sums
of one level, composed from the reference ops (autograd gives the backward)."""

from kdops._layout import to_acc
from kdops.reference.fgd_focal_loss import fgd_focal_loss
from kdops.reference.gc_context import gc_context


def relation_sums(student, teacher):
    """(diff_sq, diff_sum): sum (S - T)^2 (0-dim) and diff_sum[n, c] = sum_hw (S - T), in the accumulation dtype."""
    d = to_acc(student) - to_acc(teacher)
    return (d * d).sum(), d.sum(dim=(2, 3))


def fgd_feature_pass(student, teacher, *, fg, bg, student_gc_weight, student_gc_bias, teacher_gc_weight,
                     teacher_gc_bias, temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4,
                     gamma: float = 5e-4):
    """Returns (loss, terms, ctx_s, ctx_t, diff_sq, diff_sum), float32 (float64 for float64 features)."""
    loss, terms = fgd_focal_loss(student, teacher, fg=fg, bg=bg, temperature=temperature, alpha=alpha, beta=beta,
                                 gamma=gamma)
    ctx_s = gc_context(student, student_gc_weight, student_gc_bias)[0]
    ctx_t = gc_context(teacher, teacher_gc_weight, teacher_gc_bias)[0]
    return (loss, terms, ctx_s, ctx_t, *relation_sums(student, teacher))
