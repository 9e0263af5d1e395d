"""The training loop's loss window: tensors per step, floats and the finiteness check once per record."""

import math

import pytest
import torch

from kdtrain.engine import StepWindow


def test_means_over_the_steps_that_have_each_loss():
    w = StepWindow()
    w.add(0, {"loss": torch.tensor(1.0), "distill_fgd": torch.tensor(0.5)})
    w.add(1, {"loss": torch.tensor(3.0, requires_grad=True) * 1})  # a key absent in one step
    assert len(w) == 2
    assert w.means() == {"loss": 2.0, "distill_fgd": 0.5}
    assert all(not v.requires_grad for _, values, _ in w.steps for v in values.values())  # no graph kept alive


def test_the_first_non_finite_step_is_named_with_what_went_first():
    w = StepWindow()
    w.add(7, {"loss": torch.tensor(1.0), "a": torch.tensor(1.0)})
    w.add(8, {"loss": torch.tensor(math.nan), "a": torch.tensor(math.inf)})
    w.add(9, {"loss": torch.tensor(math.inf), "a": torch.tensor(2.0)})
    assert w.first_nonfinite() == (8, "a")  # the loss that made the total non-finite, not the total
    assert StepWindow().first_nonfinite() is None  # an empty window has nothing to check
    w.steps.pop(1), w.steps.pop(1)
    assert w.first_nonfinite() is None


def test_a_cleared_gradient_flag_is_a_non_finite_step():
    w = StepWindow()
    ok, bad = torch.tensor(True), torch.tensor(False)
    w.add(3, {"loss": torch.tensor(1.0)}, {"gradient": ok, "gradient_fgd": ok})
    w.add(4, {"loss": torch.tensor(1.0)}, {"gradient": bad, "gradient_fgd": bad})
    assert w.first_nonfinite() == (4, "gradient_fgd")  # the term whose backward did it, before the whole gradient
    assert w.means() == {"loss": 1.0}  # flags are not metrics
