"""SSDlite320-MobileNetV3 (no FPN, fixed square input) as a student, and as a teacher."""

import json
import math

import pytest
import torch

from kdtrain.cli import main
from kdtrain.distill.distiller import Distiller
from kdtrain.distill.levels import probe_levels
from kdtrain.errors import UsageError
from kdtrain.metrics_log import read_jsonl
from kdtrain.model_args import check_model_args
from kdtrain.models import ModelSpec, build_detector, load_detector

from kdtrain_testutil import SIZE, TEACHER, one_stage_train_args, tiny_spec

SSD = "ssdlite320_mobilenet_v3_large"


def test_ssdlite_levels_and_fixed_input():
    model = build_detector(ModelSpec(SSD, 6))
    assert model.transform.fixed_size == (320, 320)  # torchvision's size when --min-size is not given
    channels, strides = probe_levels(model.backbone)
    # One map per SSD level, none from an FPN; the probe tells 256 from 512 although both are 1 cell at 256 px.
    assert list(strides.values()) == [16, 32, 64, 128, 256, 512]
    assert list(channels.values()) == [672, 480, 512, 256, 256, 128]
    small = build_detector(ModelSpec(SSD, 6, min_size=128, max_size=128))
    small.eval()
    (detections,) = small([torch.rand(3, 90, 200)])
    assert small.transform.fixed_size == (128, 128) and detections["boxes"].shape[-1] == 4


def test_ssdlite_size_and_model_args_errors():
    with pytest.raises(UsageError, match="resizes every image to one square.*--max-size 200"):
        build_detector(ModelSpec(SSD, 6, min_size=128, max_size=200))
    with pytest.raises(UsageError, match="anchor_sizes is not supported for ssdlite"):
        build_detector(ModelSpec(SSD, 6, kwargs={"anchor_sizes": [16, 32]}))
    with pytest.raises(UsageError, match="--model-arg min_size: not an argument of ssdlite"):
        check_model_args(SSD, {"min_size": 100})
    check_model_args(SSD, {"detections_per_img": 50, "topk_candidates": 100})


def test_ssdlite_student_pairs_by_image_stride_and_teacher_sees_its_own_input(teacher_ckpt):
    teacher, _, _ = load_detector(teacher_ckpt)  # 64 px, ImageNet normalisation, padded batch
    torch.manual_seed(0)
    student = build_detector(ModelSpec(SSD, 6, min_size=2 * SIZE))  # 128 px square, [-1, 1] pixels
    images = [torch.rand(3, 48, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 4.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.0, 10.0, 20.0, 32.0]]), "labels": torch.tensor([2])}]
    for recipe in ("fgd", "imitation"):
        distiller = Distiller(student, teacher, recipe, log=lambda *a: None).train()
        # A stride-16 map of the 128 px input covers 8 pixels of the teacher's 64 px one.
        assert [(p.student, p.teacher, p.stride) for p in distiller.pairs] == [
            ("0", "1", 8), ("1", "2", 16), ("2", "3", 32), ("3", "pool", 64)]
        assert distiller.teacher_own_input
        distiller.profile = True
        losses = distiller(images, targets, 0)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        ctx = distiller.last_context
        t_list, _ = teacher.transform(images)
        for p in distiller.pairs:  # the teacher's features come from its own transform, not the student's
            expect = teacher.backbone(t_list.tensors)[p.teacher]
            assert torch.allclose(ctx.teacher_features[p.teacher], expect, atol=1e-5)
        for img, t, t_ctx, (th, tw) in zip(images, targets, ctx.targets, t_list.image_sizes):
            # Boxes for the FGD/imitation masks: in the teacher's pixels, whatever the student's squash.
            scale = torch.tensor([tw / img.shape[-1], th / img.shape[-2]] * 2)
            assert torch.allclose(t_ctx["boxes"], t["boxes"] * scale, atol=1e-4)
    fgd = Distiller(student, teacher, "fgd", log=lambda *a: None).terms["fgd"]
    assert fgd.family == "retinanet"  # FGD has no SSD preset: the one-stage anchor-based one


def test_ssdlite_teacher_for_an_fpn_student():
    torch.manual_seed(0)
    teacher = build_detector(ModelSpec(SSD, 6, min_size=2 * SIZE)).eval()
    student = build_detector(tiny_spec(TEACHER))
    distiller = Distiller(student, teacher, "cwd", log=lambda *a: None).train()
    # Student stride 8 at 64 px covers 16 pixels of the teacher's 128 px input.
    assert [(p.student, p.teacher, p.stride) for p in distiller.pairs] == [
        ("1", "0", 16), ("2", "1", 32), ("3", "2", 64), ("pool", "3", 128)]
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    assert all(torch.isfinite(v) for v in distiller(images, targets, 0).values())
    with pytest.raises(UsageError, match="recipe chen2017 .*student FasterRCNN, teacher SSD"):
        Distiller(student, teacher, "chen2017", log=lambda *a: None)


def test_ssdlite_student_trains_and_evaluates(tiny_data, teacher_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    main(["--debug", *one_stage_train_args(tiny_data, out, "--arch", SSD, "--teacher", teacher_ckpt,
                                           "--recipe", "fgd", "--iterations", 2)])
    # Same 64 px side as the teacher: the SSD levels of strides 16, 32, 64 meet the teacher's FPN.
    assert "level pairs (student->teacher @stride): 0->2@16, 1->3@32, 2->pool@64" in capsys.readouterr().out
    records = read_jsonl(str(out / "metrics.jsonl"))
    train_records = [r for r in records if r["kind"] == "train"]
    assert len(train_records) == 2
    assert all(math.isfinite(r[k]) for r in train_records for k in ("distill_fgd", "classification", "bbox_regression"))
    ckpt = str(out / "model_final.pth")
    model, spec, _ = load_detector(ckpt)
    assert spec.arch == SSD and model.transform.fixed_size == (SIZE, SIZE)
    assert main(["eval", "--checkpoint", ckpt, "--images", tiny_data["val"]["images"], "--ann", tiny_data["val"]["ann"],
                 "--workers", "0", "--no-progress", "--output", str(tmp_path / "eval.json")]) == 0
    assert 0.0 <= json.load(open(tmp_path / "eval.json"))["mAP"] <= 1.0
