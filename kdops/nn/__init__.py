"""nn.Module wrappers of the kdops losses (they own the learnable pieces: adaptation layers, GcBlocks)."""

from kdops.nn.hint import HintLoss

__all__ = ["HintLoss"]
