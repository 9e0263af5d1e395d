"""Ground-truth boxes in feature-map coordinates of one level."""

from __future__ import annotations

import torch


def boxes_on_level(targets: list[dict], stride: int) -> list[torch.Tensor]:
    """Map boxes (in padded-batch pixels, as the shared transform returns them) to a level.

    Cell i of a stride-s level covers padded pixels [i*s, (i+1)*s), so the map is
    box / s, with s the level's stride on the padded batch (``level_strides``).
    FGD's official code scales by the unpadded image size instead, which shifts
    every box of an image smaller than its padded batch.
    """
    return [t["boxes"] / float(stride) for t in targets]
