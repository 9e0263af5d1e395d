"""A pure-PyTorch port of the official MGD detection loss (github yzd-v/MGD, det/mmdet/distillation/losses/mgd.py,
FeatureLoss), test-only: the oracle kdops.nn.MGDLoss is checked against, and the "official" benchmark baseline.

It keeps the official structure: an optional 1x1 align conv, the mask multiplied into the aligned student
(a product, not a select), the generation block (3x3 conv, in-place ReLU, 3x3 conv), MSELoss(reduction="sum")
divided by N, times alpha. The one change: the official code draws its mask inside the loss from torch's
global generator, on the host (torch.rand((N, 1, H, W)) then .to(device)); here the caller passes the
uniform draw `u` (N, 1, H, W), so both sides see the same mask. The official keep rule is kept:
`where(u > 1 - lambda, 0, 1)`.
"""

import torch
from torch import nn


class OfficialMGD(nn.Module):
    def __init__(self, student_channels, teacher_channels, alpha_mgd=0.00002, lambda_mgd=0.65):
        super().__init__()
        self.alpha_mgd = alpha_mgd
        self.lambda_mgd = lambda_mgd
        if student_channels != teacher_channels:
            self.align = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.align = None
        self.generation = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1))

    def forward(self, preds_S, preds_T, u):
        assert preds_S.shape[-2:] == preds_T.shape[-2:]
        if self.align is not None:
            preds_S = self.align(preds_S)
        return self.dis_loss(preds_S, preds_T, u) * self.alpha_mgd

    def dis_loss(self, preds_S, preds_T, u):
        N = preds_T.shape[0]
        mat = torch.where(u > 1 - self.lambda_mgd, 0, 1).to(preds_S.device)
        new_fea = self.generation(torch.mul(preds_S, mat))
        return nn.MSELoss(reduction="sum")(new_fea, preds_T) / N


def official_from(mgd_loss) -> OfficialMGD:
    """An OfficialMGD with the same hyper-parameters, channels, dtype and weights as a kdops.nn.MGDLoss
    (whose parameter names are the official ones)."""
    official = OfficialMGD(mgd_loss.student_channels, mgd_loss.teacher_channels, mgd_loss.alpha, mgd_loss.lambda_)
    weight = mgd_loss.generation[0].weight
    official = official.to(device=weight.device, dtype=weight.dtype)
    official.load_state_dict({k: v for k, v in mgd_loss.state_dict().items() if not k.endswith("_extra_state")})
    return official
