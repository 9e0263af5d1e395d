"""What every backend agrees on, written once: the accumulation dtype and the layout of the statistics a forward
hands its backward (columns by name, in order). The C++ twins are csrc/include/kdops/common.h (acc_dtype) and
csrc/include/kdops/layout.h; tests/native/test_layout.py holds the two together. The Triton kernels take the widths
and columns as tl.constexpr from here.
"""

import torch

# soft_cross_entropy's row_stats (rows, len) and cwd_loss's row_stats (N*C, len): kdops::soft_ce / kdops::cwd.
# ld_loss's row_stats (rows, len) are cwd_loss's: the same per-row KL (docs/math.md §11).
SOFT_CE_STATS = ("max_s", "log_sum_s", "max_t", "log_sum_t", "log_sum_1", "weight")
CWD_STATS = ("max_s", "log_sum_s", "max_t", "log_sum_t", "near", "shift")
# pkd_loss's channel_stats (C, len): kdops::pkd
PKD_STATS = ("mean_s", "std_s", "mean_t", "std_t", "squared_diff")
# fgd_feature_pass' scratch per (image, pixel block) task: kdops::feature_pass
FEATURE_PASS_PARTIALS = ("abs_s", "abs_t", "diff", "fg", "bg", "ctx_s", "ctx_t")  # per-channel partial sums
FEATURE_PASS_SOFTMAXES = ("att", "gc_s", "gc_t")  # online softmaxes, (max, sum) each
# feature_imitation's integer codes of `loss` and `normalize`: kdops::Loss / kdops::Normalize
LOSSES = ("mse", "l1")
NORMALIZERS = ("batch", "mean", "mask")
# ld_loss's integer codes of `normalize`: kdops::ld
LD_NORMALIZERS = ("sum", "mean", "weight")
# quality_focal_kd's integer codes of `normalize`: kdops::qfkd
QFKD_NORMALIZERS = ("sum", "mean", "weight")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and output dtype of every reduction (docs/math.md §0): float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def to_acc(x: torch.Tensor) -> torch.Tensor:
    """x in its accumulation dtype."""
    return x.to(acc_dtype(x.dtype))
