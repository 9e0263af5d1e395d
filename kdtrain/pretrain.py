"""Backbone pretraining on a generated classification task: the offline stand-in for ImageNet weights.

The papers distil students whose backbones start from ImageNet classification weights. Offline, the
project makes its own: a torchvision classification network (the detector's backbone, e.g. ResNet-18 or
MobileNetV3-Large) learns to name the single shape in generated crops (kdtrain/data/synthetic.py,
PRETEXT_CLASSES: the detection classes and five more). The saved file holds the classification
network's state_dict, so a detector loads it exactly as torchvision loads ImageNet weights
(`--weights-backbone FILE`: FrozenBatchNorm2d, the first stages frozen; kdtrain/models.py).

BatchNorm statistics are recomputed over training crops before saving: MobileNetV3's BatchNorm
momentum is 0.01, so after a few hundred steps its running statistics still hold their initial
values, and a frozen copy of them would feed the detector wrong features.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torchvision
from torch import nn
from tqdm import tqdm

from kdtrain import checkpoint as ckpt_io
from kdtrain.data.synthetic import PRETEXT_CLASSES, render_crops
from kdtrain.errors import UsageError

FORMAT = "kdtrain-backbone-v1"
NETWORKS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large")
# torchvision's ImageNet normalisation, which every detector's transform applies.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_RECALIBRATION_CROPS = 2048


def _network(name: str, num_classes: int) -> nn.Module:
    if name not in NETWORKS:
        raise UsageError(f"no pretraining for backbone {name!r}; choose one of {', '.join(NETWORKS)}")
    return getattr(torchvision.models, name)(num_classes=num_classes)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.permute(0, 3, 1, 2).float() / 255 - mean) / std


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            correct += (model(_normalise(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum().item()
    return correct / len(images)


def _recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 256) -> None:
    """Running statistics as the plain average over ``images`` (momentum None), in train mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(_normalise(images[i:i + batch]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def pretrain_backbone(network: str, path: str, *, steps: int, batch_size: int = 64, crop: int = 48,
                      train_crops: int = 6000, val_crops: int = 1000, lr: float = 2e-3, seed: int = 0,
                      progress: bool = True, log=print) -> dict:
    """Train ``network`` on the pretext task and save it to ``path``; returns the file's metadata."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    images, labels = (torch.from_numpy(a) for a in render_crops(train_crops, seed, crop))
    val_images, val_labels = (torch.from_numpy(a) for a in render_crops(val_crops, seed + 10_000, crop))
    model = _network(network, len(PRETEXT_CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, i / steps))))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc=f"pretrain[{network}]", disable=not progress, dynamic_ncols=True):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        x = images[index]
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(2), x)
        loss = nn.functional.cross_entropy(model(_normalise(x)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    _recalibrate_batchnorm(model, images[:_RECALIBRATION_CROPS])
    accuracy = _accuracy(model, val_images, val_labels)
    meta = {"format": FORMAT, "network": network, "classes": list(PRETEXT_CLASSES), "val_accuracy": accuracy,
            "settings": {"steps": steps, "batch_size": batch_size, "crop": crop, "train_crops": train_crops,
                         "lr": lr, "seed": seed},
            "seconds": time.perf_counter() - started}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ckpt_io.atomic_save({**meta, "state_dict": model.state_dict()}, path)
    log(f"[pretrain] {network}: {accuracy:.1%} accuracy on {val_crops} held-out crops "
        f"({len(PRETEXT_CLASSES)} classes, chance {1 / len(PRETEXT_CLASSES):.0%}), {meta['seconds'] / 60:.1f} min")
    return meta


def load_backbone_file(path: str, network: str) -> dict:
    """The classification state_dict of a pretraining file, without its classifier; one-line errors."""
    try:
        payload = ckpt_io.load(path, "cpu")
    except UsageError:
        raise
    except Exception as e:  # a truncated or foreign file
        raise UsageError(f"--weights-backbone {path}: not a readable backbone file ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"--weights-backbone {path}: not a kdtrain backbone file (expected format {FORMAT!r}); "
                         "make one with kdtrain's pretraining, or give torchvision weights by name (e.g. DEFAULT)")
    if payload["network"] != network:
        raise UsageError(f"--weights-backbone {path}: holds a {payload['network']} backbone, the detector needs "
                         f"{network}")
    state = payload["state_dict"]
    classifier = ("fc.", "classifier.")
    return {k: v for k, v in state.items() if not k.startswith(classifier)}
