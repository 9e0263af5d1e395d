"""The losses of the steps since the last metrics record, kept as tensors on their device.

Reading a loss (``float``, ``isfinite`` in an ``if``) waits for the device; doing it once per record
instead of once per step keeps the training loop free of host syncs.
"""

from __future__ import annotations

import torch


class StepWindow:
    def __init__(self):
        self.steps: list[tuple[int, dict]] = []  # (iteration, {name: 0-dim tensor})

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, iteration: int, values: dict) -> None:
        self.steps.append((iteration, {k: v.detach() for k, v in values.items()}))

    def check_finite(self, key: str = "loss") -> None:
        """FloatingPointError naming the first step whose ``key`` is not finite, with its values."""
        if not self.steps:
            return
        finite = torch.isfinite(torch.stack([v[key].float() for _, v in self.steps]))
        if not bool(finite.all()):
            iteration, values = self.steps[int((~finite).nonzero()[0, 0])]
            raise FloatingPointError(f"non-finite {key} at iteration {iteration}: "
                                     + ", ".join(f"{k}={float(v):.4g}" for k, v in values.items() if k != key))

    def means(self) -> dict:
        """{name: mean over the steps that have it} as floats."""
        names = dict.fromkeys(k for _, values in self.steps for k in values)
        return {k: float(torch.stack([v[k].float() for _, v in self.steps if k in v]).mean()) for k in names}
