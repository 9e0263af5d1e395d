"""Backbone pretraining (kdtrain/pretrain.py): the file it writes, how detectors load it, the demo's cache."""

import pytest
import torch

from kdtrain_testutil import SIZE

from kdtrain.config import DemoConfig
from kdtrain.demo.common import pretrained_backbone
from kdtrain.errors import UsageError
from kdtrain.models import ModelSpec, build_detector, load_detector
from kdtrain.pretrain import load_backbone_file, pretrain_backbone

ARCH = "fasterrcnn_resnet18_fpn"


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("backbone") / "resnet18.pth")
    meta = pretrain_backbone("resnet18", path, steps=2, batch_size=8, train_crops=64, val_crops=32, progress=False,
                             log=lambda *a: None)
    assert meta["network"] == "resnet18" and 0 <= meta["val_accuracy"] <= 1
    return path


def test_a_detector_starts_from_the_file_with_frozen_batchnorm_and_frozen_first_stages(backbone_file, tmp_path):
    state = load_backbone_file(backbone_file, "resnet18")
    model = build_detector(ModelSpec(ARCH, 6, weights_backbone=backbone_file, min_size=SIZE, max_size=SIZE))
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert type(body.bn1).__name__ == "FrozenBatchNorm2d"
    assert not body.conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad  # 3 trainable stages


def test_a_checkpoint_of_such_a_detector_reloads_without_the_file(backbone_file, tmp_path):
    spec = ModelSpec(ARCH, 6, weights_backbone=backbone_file, min_size=SIZE, max_size=SIZE)
    model = build_detector(spec)
    moved = {**spec.to_dict(), "weights_backbone": str(tmp_path / "deleted.pth")}  # the file is not read again
    path = str(tmp_path / "model.pth")
    torch.save({"model_spec": moved, "model_state": model.state_dict()}, path)
    loaded, _, _ = load_detector(path)
    assert torch.equal(loaded.backbone.body.conv1.weight, model.backbone.body.conv1.weight)
    assert type(loaded.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"


def test_a_file_of_another_network_or_format_is_refused_in_one_line(backbone_file, tmp_path):
    with pytest.raises(UsageError, match="holds a resnet18 backbone, the detector needs mobilenet_v3_large"):
        load_backbone_file(backbone_file, "mobilenet_v3_large")
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(UsageError, match="not a kdtrain backbone file"):
        load_backbone_file(str(other), "resnet18")
    with pytest.raises(UsageError, match="takes torchvision's weights by name"):
        build_detector(ModelSpec("retinanet_resnet50_fpn", 6, weights_backbone=backbone_file))


def test_the_demo_pretrains_once_and_rebuilds_a_corrupt_cache(tmp_path, monkeypatch):
    calls = []

    def fake_pretrain(network, path, **kw):  # the real one is tested above; here only the caching matters
        calls.append(network)
        return pretrain_backbone(network, path, steps=1, batch_size=4, train_crops=8, val_crops=8, progress=False,
                                 log=lambda *a: None)
    monkeypatch.setattr("kdtrain.pretrain.pretrain_backbone", fake_pretrain)
    d = DemoConfig(cache_dir=str(tmp_path), pretrain_steps=1, progress=False)
    lines = []
    path = pretrained_backbone(d, ARCH, lines.append)
    assert calls == ["resnet18"]
    assert pretrained_backbone(d, ARCH, lines.append) == path and calls == ["resnet18"]  # cached
    with open(path, "r+b") as f:  # a torn write
        f.truncate(100)
    assert pretrained_backbone(d, ARCH, lines.append) == path and calls == ["resnet18", "resnet18"]
    assert any("does not load" in line and "pretraining it again" in line for line in lines)
    load_backbone_file(path, "resnet18")
    assert pretrained_backbone(DemoConfig(cache_dir=str(tmp_path), pretrain_steps=0), ARCH) is None
    with pytest.raises(UsageError, match="--pretrain-steps"):
        pretrained_backbone(DemoConfig(cache_dir=str(tmp_path), pretrain_steps=-1), ARCH)
