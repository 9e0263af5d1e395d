"""The code examples of the README (an op, a module) and of docs/ops.md run as written.

The FeatureDistiller examples (README and docs/feature_distiller.md) are run, and their printed pairs
checked, by tests/nn/test_feature_distiller.py.
"""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path, before=None):
    """The ```python blocks of `path`, those above the heading `before` when given."""
    text = (ROOT / path).read_text(encoding="utf-8")
    if before is not None:
        assert before in text, f"{path}: no heading {before!r}"
        text = text.split(before, 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


EXAMPLES = {
    "README-op": (python_blocks("README.md", "### Distil any model"), 0),
    "README-module": (python_blocks("README.md", "### Distil any model"), 1),
    "ops-head-losses": (python_blocks("docs/ops.md"), 0),
}


def test_the_examples_are_where_this_file_looks():
    assert len(python_blocks("README.md", "### Distil any model")) == 2
    assert len(python_blocks("docs/ops.md")) == 1


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, capsys):
    blocks, index = EXAMPLES[name]
    namespace = {"__name__": "example"}
    exec(compile(blocks[index], f"{name} example", "exec"), namespace)
    losses = [v for v in namespace.values() if isinstance(v, torch.Tensor) and v.dim() == 0 and v.is_floating_point()]
    assert losses and all(torch.isfinite(v) for v in losses), name
    leaves = [v for v in namespace.values() if isinstance(v, torch.Tensor) and v.requires_grad and v.is_leaf]
    assert leaves and all(v.grad is not None and torch.isfinite(v.grad).all() for v in leaves), name
