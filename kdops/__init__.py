"""kdops: knowledge-distillation losses for object detectors as fused autograd ops.

Each op has four backends computing the same function (docs/math.md): "reference" (pure PyTorch),
"cpu" (C++), "cuda" (fused CUDA) and "triton" (fused Triton). Pick one per call with
`backend=`, for the process with KDOPS_BACKEND, or leave both unset for the automatic choice.
"""

from kdops import _extension  # noqa: F401  (loads the native kernels, warns once if missing)
from kdops._backend import BACKENDS, BackendUnavailableError, available_backends
from kdops._memory import cpu_gradient_cache_bytes, empty_cpu_gradient_cache
from kdops.ops.attention_masks import attention_masks
from kdops.ops.bounded_regression import bounded_regression
from kdops.ops.box_masks import box_masks
from kdops.ops.cwd_loss import cwd_loss
from kdops.ops.feature_imitation import feature_imitation
from kdops.ops.fgd_feature_pass import FeaturePass, fgd_feature_pass
from kdops.ops.fgd_focal_loss import fgd_focal_loss
from kdops.ops.gc_context import gc_context
from kdops.ops.ld_loss import ld_loss
from kdops.ops.pkd_loss import pkd_loss
from kdops.ops.quality_focal_kd import quality_focal_kd
from kdops.ops.relation_mse import relation_mse
from kdops.ops.soft_binary_cross_entropy import soft_binary_cross_entropy
from kdops.ops.soft_cross_entropy import soft_cross_entropy
from kdops import nn  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "attention_masks",
    "available_backends",
    "bounded_regression",
    "box_masks",
    "cpu_gradient_cache_bytes",
    "cwd_loss",
    "empty_cpu_gradient_cache",
    "feature_imitation",
    "FeaturePass",
    "fgd_feature_pass",
    "fgd_focal_loss",
    "gc_context",
    "ld_loss",
    "nn",
    "pkd_loss",
    "quality_focal_kd",
    "relation_mse",
    "soft_binary_cross_entropy",
    "soft_cross_entropy",
]
