"""nn.Module wrappers of the kdops losses (they own the learnable pieces: adaptation layers, GcBlocks)."""

from kdops.nn.channel import CWDLoss, PKDLoss
from kdops.nn.distiller import FeatureDistiller
from kdops.nn.fgd import FGDLoss, GcBlock
from kdops.nn.heads import BoundedRegressionLoss, DistillBinaryCrossEntropy, DistillCrossEntropy
from kdops.nn.hint import HintLoss
from kdops.nn.mgd import MGDLoss
from kdops.nn.one_stage_heads import BoxKDLoss, LDLoss, QualityFocalKDLoss, box_kd_weights

__all__ = ["BoundedRegressionLoss", "BoxKDLoss", "box_kd_weights", "CWDLoss", "DistillBinaryCrossEntropy",
           "DistillCrossEntropy", "FeatureDistiller", "FGDLoss", "GcBlock", "HintLoss", "LDLoss", "MGDLoss", "PKDLoss",
           "QualityFocalKDLoss"]
