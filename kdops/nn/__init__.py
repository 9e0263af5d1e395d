"""nn.Module wrappers of the kdops losses (they own the learnable pieces: adaptation layers, GcBlocks)."""

from kdops.nn.fgd import FGDLoss, GcBlock
from kdops.nn.hint import HintLoss

__all__ = ["FGDLoss", "GcBlock", "HintLoss"]
