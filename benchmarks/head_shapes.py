"""Head-loss benchmark shapes (docs/math.md "Shapes that matter"): Faster R-CNN ROI head and RPN."""

import torch

from common import DEVICE

ROI_ROWS, ROI_CLASSES = 1024, 91       # 512 sampled proposals x 2 images, COCO's 91 torchvision classes
RPN_ANCHORS = 2 * 250_000              # ~250k anchors per 800x1333 image x 2 images


def labels(shape, low, high, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).to(DEVICE)
