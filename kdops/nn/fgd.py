"""FGD: focal and global distillation (Yang et al. 2022) as one module (docs/math.md §2-§4)."""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdops import _checks
from kdops._layout import acc_dtype
from kdops.ops.box_masks import box_masks
from kdops.ops.fgd_feature_pass import fgd_feature_pass
from kdops.ops.gc_context import gc_context

# Official per-family hyper-parameters (temperature, alpha, beta, gamma, lambda_), docs/math.md §4.
PRESETS = {
    "two_stage": dict(temperature=0.5, alpha=5e-5, beta=2.5e-5, gamma=5e-5, lambda_=5e-7),
    "retinanet": dict(temperature=0.5, alpha=1e-3, beta=5e-4, gamma=5e-4, lambda_=5e-6),
    "fcos": dict(temperature=0.8, alpha=1.6e-3, beta=8e-4, gamma=8e-4, lambda_=8e-6),
}


class GcBlock(nn.Module):
    """The GcBlock of FGD's global loss: delta = W2 relu(LN(W1 context + b1)) + b2 (docs/math.md §4).

    context = kdops.gc_context(feat, conv_mask): softmax attention pooling over the pixels. The
    channel-add MLP is C -> C/2 -> C with a LayerNorm and ReLU; its last conv starts at zero (as in
    the official code), so the relation loss starts as plain feature MSE.
    """

    def __init__(self, channels: int, backend: Optional[str] = None):
        super().__init__()
        hidden = max(channels // 2, 1)
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        self.backend = backend
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmcv kaiming_init(mode="fan_in") on the mask conv, constant 0 on the last conv (official FGD).
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, feat: Tensor) -> Tensor:
        """(N, C, H, W) -> delta (N, C)."""
        return self.transform(gc_context(feat, self.conv_mask.weight, self.conv_mask.bias, backend=self.backend))

    def transform(self, context: Tensor) -> Tensor:
        """The channel-add MLP: context (N, C) -> delta (N, C)."""
        # The MLP runs on (N, C) vectors: 1x1 convs on a 1x1 map are matmuls, and plain ops avoid the
        # per-call cost of the conv and layer-norm kernels (~30 ms per GcBlock fwd+bwd on a loaded 2-core
        # CPU, against < 1 ms). Same parameters and math as self.channel_add (official shapes).
        first, norm, _, last = self.channel_add
        x = context.to(first.weight.dtype)
        x = F.linear(x, first.weight.flatten(1), first.bias)
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).square().mean(dim=1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + norm.eps) * norm.weight.flatten() + norm.bias.flatten()
        return F.linear(torch.relu(x), last.weight.flatten(1), last.bias)


class FGDLoss(nn.Module):
    """L = alpha L_fg + beta L_bg + gamma L_att + lambda_ L_global on one feature level (FGD eq. 9-13).

    forward(student, teacher, boxes):
        student: (N, C_s, H, W) student feature; teacher: (N, C_t, H, W) teacher feature (detached
        here: the teacher is a constant of the loss). boxes: one (K_i, 4) tensor per image,
        (x1, y1, x2, y2) already in this level's feature-map pixels (image pixels / stride of the
        padded batch), on the features' device; K_i may be 0.
    Returns the 0-dim total (float32, float64 for float64 features). After each call
    `last_terms` holds the detached weighted terms {"fg", "bg", "attention", "global"}, which add up
    to the total (tensors: no host sync).

    The student side goes through `align` (a 1x1 conv, only when the channel counts differ), and
    each side has its own GcBlock (`student_gc`, `teacher_gc`), as in the official design.

    Args:
        student_channels, teacher_channels: channel counts of the two features.
        temperature, alpha, beta, gamma, lambda_: FGD's hyper-parameters; see `preset` for the
            official values per detector family. The defaults are RetinaNet's.
        backend: kdops backend for every op, None for automatic.
    """

    def __init__(self, student_channels: int, teacher_channels: int, temperature: float = 0.5, alpha: float = 1e-3,
                 beta: float = 5e-4, gamma: float = 5e-4, lambda_: float = 5e-6, backend: Optional[str] = None):
        super().__init__()
        self.align = (nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
                      if student_channels != teacher_channels else None)
        self.student_gc = GcBlock(teacher_channels, backend)
        self.teacher_gc = GcBlock(teacher_channels, backend)
        who = "nn.FGDLoss"  # checked here, not at the first forward: a NaN weight would only show as a NaN loss
        self.temperature = _checks.temperature(temperature, who)
        self.alpha, self.beta, self.gamma, self.lambda_ = (_checks.number(v, who, name) for v, name in (
            (alpha, "alpha"), (beta, "beta"), (gamma, "gamma"), (lambda_, "lambda_")))
        self.backend = backend
        self.last_terms: dict = {}

    @classmethod
    def preset(cls, family: str, student_channels: int, teacher_channels: int, **kwargs) -> "FGDLoss":
        """FGDLoss with the official hyper-parameters of `family`: "two_stage" (Faster R-CNN and
        friends), "retinanet" or "fcos". Extra keyword arguments override them."""
        if family not in PRESETS:
            raise ValueError(f"FGDLoss.preset: family must be one of {tuple(PRESETS)}, got {family!r}")
        return cls(student_channels, teacher_channels, **{**PRESETS[family], **kwargs})

    def forward(self, student: Tensor, teacher: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        if self.align is not None:
            student = self.align(student)
        teacher = teacher.detach()
        if teacher.dtype != student.dtype:  # e.g. a float32 teacher and an autocast student
            teacher = teacher.to(student.dtype)
        if student.shape != teacher.shape:
            raise ValueError(f"FGDLoss: the (aligned) student feature {tuple(student.shape)} and the teacher feature "
                             f"{tuple(teacher.shape)} must have the same shape")
        if not isinstance(boxes, (list, tuple)) or len(boxes) != student.shape[0]:
            raise ValueError(f"FGDLoss: boxes must be a list with one (K_i, 4) tensor per image "
                             f"({student.shape[0]} images), got {type(boxes).__name__} of length "
                             f"{len(boxes) if isinstance(boxes, (list, tuple)) else '-'}")
        for i, b in enumerate(boxes):
            if isinstance(b, torch.Tensor) and b.device != student.device:
                raise ValueError(f"FGDLoss: boxes[{i}] is on {b.device} but the features are on {student.device}; "
                                 "move the boxes to the features' device")
        if len(boxes) == 0:  # N = 0: empty masks on the features' device (an empty list names no device)
            empty = student.new_zeros((0, 4), dtype=acc_dtype(student.dtype))
            fg, bg = box_masks(empty, student.shape[-2:], empty.new_zeros((0,), dtype=torch.long), 0,
                               backend=self.backend)
        else:
            fg, bg = box_masks(boxes, student.shape[-2:], backend=self.backend)
        # kdops.fgd_feature_pass reads S and T once each way on every backend; the relation loss is then
        # (N, C)-sized work: sum (S + d - T)^2 = diff_sq + 2 sum(d * diff_sum) + H*W sum(d^2), d = delta_s - delta_t.
        s_mask, t_mask = self.student_gc.conv_mask, self.teacher_gc.conv_mask
        out = fgd_feature_pass(student, teacher, fg=fg, bg=bg, student_gc_weight=s_mask.weight,
                               student_gc_bias=s_mask.bias, teacher_gc_weight=t_mask.weight,
                               teacher_gc_bias=t_mask.bias, temperature=self.temperature, alpha=self.alpha,
                               beta=self.beta, gamma=self.gamma, backend=self.backend)
        d = (self.student_gc.transform(out.ctx_s) - self.teacher_gc.transform(out.ctx_t)).to(out.diff_sum.dtype)
        n, hw = student.shape[0], student.shape[2] * student.shape[3]
        relation = (out.diff_sq + 2 * (d * out.diff_sum).sum() + hw * (d * d).sum()) / max(n, 1)
        t = out.terms.detach()
        self.last_terms = {"fg": self.alpha * t[0], "bg": self.beta * t[1], "attention": self.gamma * t[2],
                           "global": self.lambda_ * relation.detach()}
        return out.loss + self.lambda_ * relation

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"lambda_={self.lambda_}")
