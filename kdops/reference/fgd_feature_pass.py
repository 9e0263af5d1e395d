"""FGD feature pass, docs/math.md §3-§4: the focal loss, both GcBlock contexts and the relation loss' feature sums
of one level, composed from the reference ops (autograd gives the backward)."""

from kdops.reference._common import acc_dtype
from kdops.reference.fgd_focal_loss import fgd_focal_loss
from kdops.reference.gc_context import gc_context


def fgd_feature_pass(student, teacher, fg, bg, weight_s, bias_s, weight_t, bias_t, temperature: float, alpha: float,
                     beta: float, gamma: float):
    """Returns (loss, terms, ctx_s, ctx_t, diff_sq, diff_sum): diff_sq = sum (S - T)^2 (0-dim) and
    diff_sum[n, c] = sum_hw (S - T), in float32 (float64 for float64 features)."""
    loss, terms = fgd_focal_loss(student, teacher, fg, bg, temperature, alpha, beta, gamma)
    ctx_s = gc_context(student, weight_s, bias_s)[0]
    ctx_t = gc_context(teacher, weight_t, bias_t)[0]
    d = student.to(acc_dtype(student)) - teacher.to(acc_dtype(teacher))
    return loss, terms, ctx_s, ctx_t, (d * d).sum(), d.sum(dim=(2, 3))
