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
    assert all(not v.requires_grad for _, values in w.steps for v in values.values())  # no graph kept alive


def test_the_first_non_finite_step_is_named_with_its_losses():
    w = StepWindow()
    w.add(7, {"loss": torch.tensor(1.0), "a": torch.tensor(1.0)})
    w.add(8, {"loss": torch.tensor(math.nan), "a": torch.tensor(math.inf)})
    w.add(9, {"loss": torch.tensor(math.inf), "a": torch.tensor(2.0)})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 8: a=inf"):
        w.check_finite()
    StepWindow().check_finite()  # an empty window has nothing to check
    w.steps.pop(1), w.steps.pop(1)
    w.check_finite()
