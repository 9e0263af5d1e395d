"""Whether the gradient each distillation term sends into the student stayed finite: device flags, no host read.

A term reads the student through a view of each student tensor of the context; a hook on the view
sees that term's gradient alone (the tensor itself sums every term's and the detection losses'),
and ANDs ``isfinite(grad).all()`` into the term's flag. The trainer reads the flags where it reads its
losses, so a step that went non-finite can name the term whose backward did it.
"""

from __future__ import annotations

import torch

from kdtrain.distill.context import DistillContext


def watched(ctx: DistillContext, flag: torch.Tensor) -> DistillContext:
    """``ctx`` whose student tensors are hooked views: their gradients clear ``flag`` (a 0-dim bool) unless finite."""
    def hook(grad):
        flag.logical_and_(torch.isfinite(grad).all())

    def view(t):
        if not (torch.is_tensor(t) and t.requires_grad):
            return t
        v = t.view_as(t)
        v.register_hook(hook)
        return v

    return ctx.with_student_tensors(view)


def new_flag(ctx: DistillContext) -> torch.Tensor:
    """A True flag on the student's device."""
    some = next(iter(ctx.student_features.values()))
    return torch.ones((), dtype=torch.bool, device=some.device)
