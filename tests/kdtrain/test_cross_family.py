"""Cross-family pairs: a Faster R-CNN teacher distilling RetinaNet and FCOS students with the feature recipes."""

import json
import math

import pytest
import torch

from kdtrain.cli import main
from kdtrain.distill.distiller import Distiller
from kdtrain.errors import UsageError
from kdtrain.metrics_log import read_jsonl
from kdtrain.models import ModelSpec, build_detector, load_detector

from kdtrain_testutil import SIZE, one_stage_train_args

FEATURE_RECIPES = ("fgd", "cwd", "pkd", "imitation")
# Faster R-CNN ResNet-FPN levels '0'..'3', 'pool' have strides 4..64; RetinaNet/FCOS '0', '1', '2', 'p6', 'p7' 8..128.
EXPECTED_PAIRS = [("0", "1", 8), ("1", "2", 16), ("2", "3", 32), ("p6", "pool", 64)]


def batch():
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 48, SIZE)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 2.0, 50.0, 20.0]]), "labels": torch.tensor([2])}]
    return images, targets


@pytest.fixture(scope="module")
def teacher(teacher_ckpt):
    model, _, _ = load_detector(teacher_ckpt)
    return model


@pytest.mark.parametrize("arch,family", [("retinanet_resnet50_fpn", "retinanet"), ("fcos_resnet50_fpn", "fcos")])
def test_feature_recipes_pair_a_faster_rcnn_teacher_with_a_one_stage_student(arch, family, teacher):
    torch.manual_seed(0)
    student = build_detector(ModelSpec(arch, 6, min_size=SIZE, max_size=SIZE))
    images, targets = batch()
    for recipe in FEATURE_RECIPES:
        logs = []
        distiller = Distiller(student, teacher, recipe, log=logs.append).train()
        assert [(p.student, p.teacher, p.stride) for p in distiller.pairs] == EXPECTED_PAIRS
        assert any("0->1@8, 1->2@16, 2->3@32, p6->pool@64" in line for line in logs)
        assert not distiller.teacher_own_input  # same transform: the teacher reads the student's batch
        if recipe == "fgd":
            assert distiller.terms["fgd"].family == family  # FGD's preset follows the student
        losses = distiller(images, targets, 0)
        assert all(torch.isfinite(v) for v in losses.values()), (recipe, losses)
        student.zero_grad()
        losses[f"distill_{recipe}"].backward()
        grads = [p.grad for p in student.backbone.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), recipe  # the term reaches the student


@pytest.mark.parametrize("arch,name", [("retinanet_resnet50_fpn", "RetinaNet"), ("fcos_resnet50_fpn", "FCOS")])
def test_chen2017_refuses_a_one_stage_student(arch, name, teacher):
    student = build_detector(ModelSpec(arch, 6, min_size=SIZE, max_size=SIZE))
    with pytest.raises(UsageError, match=f"recipe chen2017 .*student {name}, teacher FasterRCNN"):
        Distiller(student, teacher, "chen2017", log=lambda *a: None)


def test_cross_family_run_trains_and_evaluates(tiny_data, teacher_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    main(["--debug", *one_stage_train_args(tiny_data, out, "--arch", "fcos_resnet50_fpn", "--teacher", teacher_ckpt,
                                           "--recipe", "fgd", "--iterations", 2)])
    assert "level pairs (student->teacher @stride): 0->1@8, 1->2@16, 2->3@32, p6->pool@64" in capsys.readouterr().out
    records = read_jsonl(str(out / "metrics.jsonl"))
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 2 and all(math.isfinite(r["distill_fgd"]) for r in train_records)
    assert [r for r in records if r["kind"] == "eval"]
    ckpt = str(out / "model_final.pth")
    _, spec, _ = load_detector(ckpt)
    assert spec.arch == "fcos_resnet50_fpn"
    assert main(["eval", "--checkpoint", ckpt, "--images", tiny_data["val"]["images"], "--ann", tiny_data["val"]["ann"],
                 "--workers", "0", "--no-progress", "--output", str(tmp_path / "eval.json")]) == 0
    assert 0.0 <= json.load(open(tmp_path / "eval.json"))["mAP"] <= 1.0
