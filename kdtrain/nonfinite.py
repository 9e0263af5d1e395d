"""A training step whose loss or gradient is no longer finite (NaN or Inf): which one went first, what to try.

Every step leaves its losses (detection, weighted distillation, unweighted ``raw_*``) and gradient
flags on the device: whether the whole gradient's norm is finite, and for each distillation term
whether the gradient it sent into the student was (kdtrain/distill/grad_flags.py). With
``--nonfinite stop`` (the default) nothing is read per step: the loop checks them where it reads its
losses anyway, every --log-every iterations and before each checkpoint, and stops at the first bad
step with one line: its iteration, what went non-finite first, what to try and the checkpoint to
resume from (a window with a bad step is never checkpointed). ``--nonfinite skip`` reads one flag
per step instead (one wait for the device per step, as a mixed-precision GradScaler's skip check):
a bad step is not applied (no optimizer step; the schedule moves on), it is logged and counted, and
``--max-skipped-steps`` bad steps in a row stop the run with the same line.
"""

from __future__ import annotations

from typing import Optional

import torch

from kdtrain.distill.recipes import TERM_KEYS
from kdtrain.errors import RunStopped

GRADIENT = "gradient"        # flag: the norm of the whole gradient is finite
TERM_GRADIENT = "gradient_"  # + a term name: the gradient that term sent into the student is finite
DISTILL, RAW = "distill_", "raw_"
TOTAL = "loss"
ELSEWHERE = "elsewhere"      # bad on another torchrun process only


class NonFiniteError(RunStopped, FloatingPointError):
    """Training stopped at a step whose loss or gradient is NaN or Inf."""


def step_flags(grad_norm: Optional[torch.Tensor], term_flags: dict) -> dict:
    """A step's gradient flags: one per distillation term, and the whole gradient's (when its norm is given)."""
    flags = {TERM_GRADIENT + name: flag for name, flag in term_flags.items()}
    if grad_norm is not None:
        flags[GRADIENT] = torch.isfinite(grad_norm)
    return flags


def _checks(values: dict, flags: dict) -> torch.Tensor:
    return torch.stack([torch.isfinite(v).all() for v in values.values()] + [f.reshape(()) for f in flags.values()])


def all_finite(values: dict, flags: dict) -> torch.Tensor:
    """0-dim bool on the device: every value finite and every flag set."""
    return _checks(values, flags).all()


def agreed(ok: torch.Tensor) -> torch.Tensor:
    """``ok`` (bool tensor) AND-ed over the torchrun processes, so that every one takes the same decision."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        as_int = ok.to(torch.int32)
        torch.distributed.all_reduce(as_int, op=torch.distributed.ReduceOp.MIN)
        return as_int.bool()
    return ok


def culprit(values: dict, flags: dict) -> Optional[str]:
    """What went non-finite in one step (one host read), by cause: a distillation loss, a detection loss, the
    total, a term's gradient, the whole gradient; its key or flag name, or None when everything is finite."""
    bad = [name for name, ok in zip([*values, *flags], _checks(values, flags).tolist()) if not ok]
    ranked = ([k for k in bad if k.startswith((DISTILL, RAW))] + [k for k in bad if k in values and k != TOTAL]
              + [k for k in bad if k == TOTAL] + [k for k in bad if k.startswith(TERM_GRADIENT)]
              + [k for k in bad if k == GRADIENT])
    return ranked[0] if ranked else None


def _loss_key(name: str) -> str:
    return name[len(DISTILL):] if name.startswith(DISTILL) else name[len(RAW):]


def describe(what: str) -> str:
    if what.startswith((DISTILL, RAW)):
        return f"the distillation loss {_loss_key(what)}"
    if what.startswith(TERM_GRADIENT):
        return f"the gradient of distillation term {what[len(TERM_GRADIENT):]}"
    if what == GRADIENT:
        return "the gradient (of the detection losses: no distillation term's was)"
    if what == TOTAL:
        return "the total loss"
    if what == ELSEWHERE:
        return "a loss of another torchrun process"
    return f"the detection loss {what}" if what.startswith("loss_") else what


def _weight_keys(what: str, weights: dict) -> list:
    """The --distill-weights keys that scale ``what`` (a term's, a loss key's or a part's such as fgd_fg)."""
    if what.startswith(TERM_GRADIENT):
        return [k for k in TERM_KEYS.get(what[len(TERM_GRADIENT):], ()) if k in weights]
    key = _loss_key(what)
    return [k for k in weights if key == k or key.startswith(k + "_")][:1]


def advice(what: str, cfg, weights: dict) -> str:
    """What to try, with the values the run has now."""
    keys = _weight_keys(what, weights) if what.startswith((DISTILL, RAW, TERM_GRADIENT)) else []
    if keys:
        lower = ",".join(f"{k}={weights[k] / 2:.3g}" for k in keys)
        return (f"try a lower weight for it (e.g. --distill-weights {lower}), a longer --distill-warmup "
                f"(now {cfg.distill_warmup}) or a lower --lr (now {cfg.lr:g})")
    clip = f"now {cfg.clip_grad:g}" if cfg.clip_grad > 0 else "now off"
    return f"try a lower --lr (now {cfg.lr:g}) or gradient clipping (--clip-grad, {clip})"


def stop_message(iteration: int, what: str, cfg, weights: dict, checkpoint: Optional[tuple],
                 in_a_row: int = 0) -> str:
    """One line: the 1-based iteration, what went non-finite, what to try, where to resume from."""
    steps = f" in {in_a_row} steps in a row (--max-skipped-steps {cfg.max_skipped_steps})" if in_a_row else ""
    resume = (f"resume from {checkpoint[0]} (iteration {checkpoint[1]}) with --resume" if checkpoint else
              f"no checkpoint was written before it (every --checkpoint-every {cfg.checkpoint_every} iterations)")
    skip = "; --nonfinite skip would skip such steps instead" if cfg.nonfinite == "stop" else ""
    return (f"iteration {iteration + 1}: {describe(what)} is not finite (NaN or Inf){steps}; "
            f"{advice(what, cfg, weights)}; {resume}{skip}")


class SkippedSteps:
    """--nonfinite skip: decide each step (one host read), count the bad ones, stop after too many in a row."""

    def __init__(self, limit: int, stop, log, write):
        # stop(iteration, what, in_a_row) -> the exception to raise; write(record) -> metrics.jsonl
        self.limit, self.stop, self.log, self.write = limit, stop, log, write
        self.total = self.in_a_row = 0

    def apply(self, iteration: int, values: dict, flags: dict) -> bool:
        """Whether the step is finite (on every process) and its update is to be applied."""
        if bool(agreed(all_finite(values, flags))):
            self.in_a_row = 0
            return True
        what = culprit(values, flags) or ELSEWHERE
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise self.stop(iteration, what, self.in_a_row)
        self.log(f"[kdtrain] iteration {iteration + 1}: skipped, {describe(what)} is not finite "
                 f"({self.in_a_row} in a row, {self.total} in all)")
        self.write({"kind": "skipped", "iteration": iteration + 1, "nonfinite": what, "in_a_row": self.in_a_row})
        return False
