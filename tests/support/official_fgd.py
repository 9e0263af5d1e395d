"""A faithful pure-PyTorch port of the official FGD loss (github yzd-v/FGD, mmdet/distillation/losses/fgd.py),
test-only: the oracle kdops.nn.FGDLoss is checked against, and the "official-style eager" benchmark baseline.

It keeps the official structure (a Python loop over boxes writing slices, sqrt-weighted features,
MSELoss(reduction="sum"), GcBlock spatial_pool with matmul) and follows docs/math.md §2-§4 where that
contract decides: boxes arrive already in feature-map pixels (docs/math.md §2: the caller divides by the
padded batch's stride); a box's value is 1 / its whole (unclipped) size, as the official code, and the
range it writes is clipped to the map (the official slices clip past the right/bottom edge; a box
reaching past the left/top edge would wrap there); boxes with x2 < x1 or y2 < y1 are skipped, as kdops
does without validation.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class OfficialFGD(nn.Module):
    def __init__(self, student_channels, teacher_channels, temp=0.5, alpha_fgd=0.001, beta_fgd=0.0005,
                 gamma_fgd=0.001, lambda_fgd=0.000005):
        super().__init__()
        self.temp = temp
        self.alpha_fgd = alpha_fgd
        self.beta_fgd = beta_fgd
        self.gamma_fgd = gamma_fgd
        self.lambda_fgd = lambda_fgd
        if student_channels != teacher_channels:
            self.align = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, stride=1, padding=0)
        else:
            self.align = None
        self.conv_mask_s = nn.Conv2d(teacher_channels, 1, kernel_size=1)
        self.conv_mask_t = nn.Conv2d(teacher_channels, 1, kernel_size=1)
        self.channel_add_conv_s = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels // 2, kernel_size=1),
            nn.LayerNorm([teacher_channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels // 2, teacher_channels, kernel_size=1))
        self.channel_add_conv_t = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels // 2, kernel_size=1),
            nn.LayerNorm([teacher_channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels // 2, teacher_channels, kernel_size=1))
        self.last_terms = {}

    def forward(self, preds_S, preds_T, gt_bboxes):
        """gt_bboxes: one (K_i, 4) tensor per image in feature-map pixels."""
        assert preds_S.shape[-2:] == preds_T.shape[-2:], "the output dim of teacher and student differ"
        if self.align is not None:
            preds_S = self.align(preds_S)
        N, C, H, W = preds_S.shape

        S_attention_t, C_attention_t = self.get_attention(preds_T, self.temp)
        S_attention_s, C_attention_s = self.get_attention(preds_S, self.temp)

        Mask_fg = torch.zeros_like(S_attention_t)
        Mask_bg = torch.ones_like(S_attention_t)
        for i in range(N):
            wmin = torch.floor(gt_bboxes[i][:, 0])
            wmax = torch.ceil(gt_bboxes[i][:, 2])
            hmin = torch.floor(gt_bboxes[i][:, 1])
            hmax = torch.ceil(gt_bboxes[i][:, 3])
            for j in range(len(gt_bboxes[i])):
                x1, y1, x2, y2 = (float(v) for v in gt_bboxes[i][j])
                if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
                    continue
                w0, w1, h0, h1 = int(wmin[j]), int(wmax[j]), int(hmin[j]), int(hmax[j])
                if w1 < 0 or h1 < 0 or w0 > W - 1 or h0 > H - 1:
                    continue  # entirely outside the map
                area = 1.0 / (h1 + 1 - h0) / (w1 + 1 - w0)  # the whole box, as the official code
                w0, h0, w1, h1 = max(w0, 0), max(h0, 0), min(w1, W - 1), min(h1, H - 1)
                Mask_fg[i][h0:h1 + 1, w0:w1 + 1] = torch.maximum(
                    Mask_fg[i][h0:h1 + 1, w0:w1 + 1], torch.tensor(area, dtype=Mask_fg.dtype))
            Mask_bg[i] = torch.where(Mask_fg[i] > 0, 0, 1)
            if torch.sum(Mask_bg[i]):
                Mask_bg[i] /= torch.sum(Mask_bg[i])

        fg_loss, bg_loss = self.get_fea_loss(preds_S, preds_T, Mask_fg, Mask_bg, C_attention_s, C_attention_t,
                                             S_attention_s, S_attention_t)
        mask_loss = self.get_mask_loss(C_attention_s, C_attention_t, S_attention_s, S_attention_t)
        rela_loss = self.get_rela_loss(preds_S, preds_T)

        self.last_terms = {"fg": self.alpha_fgd * fg_loss, "bg": self.beta_fgd * bg_loss,
                           "attention": self.gamma_fgd * mask_loss, "global": self.lambda_fgd * rela_loss}
        loss = self.alpha_fgd * fg_loss + self.beta_fgd * bg_loss \
            + self.gamma_fgd * mask_loss + self.lambda_fgd * rela_loss
        return loss

    def get_attention(self, preds, temp):
        """ preds: Bs*C*W*H """
        N, C, H, W = preds.shape
        value = torch.abs(preds)
        # Bs*W*H
        fea_map = value.mean(axis=1, keepdim=True)
        S_attention = (H * W * F.softmax((fea_map / temp).view(N, -1), dim=1)).view(N, H, W)
        # Bs*C
        channel_map = value.mean(axis=2, keepdim=False).mean(axis=2, keepdim=False)
        C_attention = C * F.softmax(channel_map / temp, dim=1)
        return S_attention, C_attention

    def get_fea_loss(self, preds_S, preds_T, Mask_fg, Mask_bg, C_s, C_t, S_s, S_t):
        loss_mse = nn.MSELoss(reduction='sum')
        Mask_fg = Mask_fg.unsqueeze(dim=1)
        Mask_bg = Mask_bg.unsqueeze(dim=1)
        C_t = C_t.unsqueeze(dim=-1)
        C_t = C_t.unsqueeze(dim=-1)
        S_t = S_t.unsqueeze(dim=1)

        fea_t = torch.mul(preds_T, torch.sqrt(S_t))
        fea_t = torch.mul(fea_t, torch.sqrt(C_t))
        fg_fea_t = torch.mul(fea_t, torch.sqrt(Mask_fg))
        bg_fea_t = torch.mul(fea_t, torch.sqrt(Mask_bg))

        fea_s = torch.mul(preds_S, torch.sqrt(S_t))
        fea_s = torch.mul(fea_s, torch.sqrt(C_t))
        fg_fea_s = torch.mul(fea_s, torch.sqrt(Mask_fg))
        bg_fea_s = torch.mul(fea_s, torch.sqrt(Mask_bg))

        fg_loss = loss_mse(fg_fea_s, fg_fea_t) / len(Mask_fg)
        bg_loss = loss_mse(bg_fea_s, bg_fea_t) / len(Mask_bg)
        return fg_loss, bg_loss

    def get_mask_loss(self, C_s, C_t, S_s, S_t):
        mask_loss = torch.sum(torch.abs((C_s - C_t))) / len(C_s) + torch.sum(torch.abs((S_s - S_t))) / len(S_s)
        return mask_loss

    def spatial_pool(self, x, in_type):
        batch, channel, width, height = x.size()
        input_x = x
        # [N, C, H * W]
        input_x = input_x.view(batch, channel, height * width)
        # [N, 1, C, H * W]
        input_x = input_x.unsqueeze(1)
        # [N, 1, H, W]
        if in_type == 0:
            context_mask = self.conv_mask_s(x)
        else:
            context_mask = self.conv_mask_t(x)
        # [N, 1, H * W]
        context_mask = context_mask.view(batch, 1, height * width)
        # [N, 1, H * W]
        context_mask = F.softmax(context_mask, dim=2)
        # [N, 1, H * W, 1]
        context_mask = context_mask.unsqueeze(-1)
        # [N, 1, C, 1]
        context = torch.matmul(input_x, context_mask)
        # [N, C, 1, 1]
        context = context.view(batch, channel, 1, 1)
        return context

    def get_rela_loss(self, preds_S, preds_T):
        loss_mse = nn.MSELoss(reduction='sum')
        context_s = self.spatial_pool(preds_S, 0)
        context_t = self.spatial_pool(preds_T, 1)
        out_s = preds_S
        out_t = preds_T
        channel_add_s = self.channel_add_conv_s(context_s)
        out_s = out_s + channel_add_s
        channel_add_t = self.channel_add_conv_t(context_t)
        out_t = out_t + channel_add_t
        rela_loss = loss_mse(out_s, out_t) / len(out_s)
        return rela_loss


def port_parameters(fgd_loss) -> dict:
    """Maps kdops.nn.FGDLoss parameter names to OfficialFGD's, to load the same weights into both."""
    names = {"student_gc.conv_mask": "conv_mask_s", "teacher_gc.conv_mask": "conv_mask_t",
             "student_gc.channel_add": "channel_add_conv_s", "teacher_gc.channel_add": "channel_add_conv_t",
             "align": "align"}
    out = {}
    for key, value in fgd_loss.state_dict().items():
        prefix = next(p for p in names if key.startswith(p + "."))
        out[names[prefix] + key[len(prefix):]] = value
    return out


def official_from(fgd_loss) -> OfficialFGD:
    """An OfficialFGD with the same hyper-parameters, channels, dtype and weights as a kdops.nn.FGDLoss."""
    teacher_channels = fgd_loss.student_gc.conv_mask.in_channels
    student_channels = fgd_loss.align.in_channels if fgd_loss.align is not None else teacher_channels
    official = OfficialFGD(student_channels, teacher_channels, fgd_loss.temperature, fgd_loss.alpha, fgd_loss.beta,
                           fgd_loss.gamma, fgd_loss.lambda_)
    weight = fgd_loss.student_gc.conv_mask.weight
    official = official.to(device=weight.device, dtype=weight.dtype)
    official.load_state_dict(port_parameters(fgd_loss))
    return official
