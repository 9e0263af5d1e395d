"""The detector names kdtrain builds (kdtrain/models.py builds them).

Plain data without torch, so ``--help`` and config checks list them without loading torchvision.
"""

# Built by torchvision's own builders (with its weights API).
TORCHVISION_DETECTORS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
)
# Detectors that squash every image to one fixed square (no FPN, no padding). Value: torchvision's
# side in pixels; --min-size replaces it (kdtrain/models.py), --max-size must then equal it.
FIXED_SIZE_DETECTORS = {"ssdlite320_mobilenet_v3_large": 320}
# Faster R-CNN on other ResNet depths: torchvision has no builder, so kdtrain composes
# its parts (ResNet + FPN extractor + FasterRCNN). Value: the torchvision ResNet builder.
RESNET_FASTERRCNN = {
    "fasterrcnn_resnet18_fpn": "resnet18",
    "fasterrcnn_resnet34_fpn": "resnet34",
    "fasterrcnn_resnet101_fpn": "resnet101",
}
# MobileNetV3-Large Faster R-CNN whose FPN starts at stride 8 (torchvision's builders take
# both FPN inputs at stride 32, too coarse for small objects or small images).
# Value: MobileNetV3 stage indices fed to the FPN.
MOBILENET_FASTERRCNN = {
    "fasterrcnn_mobilenet_v3_large_hires_fpn": [2, 3, 4],  # strides 8, 16, 32 (+ 64 from max-pool)
}


def backbone_network(arch: str):
    """The torchvision classification network whose weights a backbone file of ``arch`` holds, or None
    (kdtrain's pretraining, kdtrain/pretrain.py, makes files for these detectors)."""
    if arch in RESNET_FASTERRCNN:
        return RESNET_FASTERRCNN[arch]
    return "mobilenet_v3_large" if arch in MOBILENET_FASTERRCNN else None


# The detectors whose backbones a kdtrain backbone file (kdtrain/pretrain.py) initialises.
PRETRAINABLE = (*RESNET_FASTERRCNN, *MOBILENET_FASTERRCNN)
ARCHITECTURES = sorted([*TORCHVISION_DETECTORS, *RESNET_FASTERRCNN, *MOBILENET_FASTERRCNN])
