"""Chen 2017's low-resolution student: same architecture, input x0.5, teacher at full resolution."""

import json
import math

import pytest
import torch

from kdtrain.cli import build_parser, main
from kdtrain.commands.train import train_config
from kdtrain.engine import train
from kdtrain.distill.distiller import Distiller, teacher_input
from kdtrain.metrics_log import read_jsonl
from kdtrain.models import build_detector, load_detector

from kdtrain_testutil import SIZE, TEACHER, tiny_spec, train_args


def test_teacher_gets_its_own_input_and_boxes_follow(teacher_ckpt):
    teacher, _, _ = load_detector(teacher_ckpt)
    teacher.eval()
    spec = tiny_spec(TEACHER)
    spec.min_size = spec.max_size = SIZE // 2
    student = build_detector(spec)
    images = [torch.rand(3, 48, 64), torch.rand(3, 64, 40)]
    targets = [{"boxes": torch.tensor([[8.0, 4.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.0, 0.0, 20.0, 32.0]]), "labels": torch.tensor([2])}]
    s_list, s_targets = student.transform(images, targets)
    t_list, t_targets = teacher_input(teacher, images, s_list, s_targets)
    for i, (img, t) in enumerate(zip(images, targets)):
        sh, sw = s_list.image_sizes[i]
        th, tw = t_list.image_sizes[i]
        assert th == pytest.approx(2 * sh, abs=1) and tw == pytest.approx(2 * sw, abs=1)
        # Both resolutions hold the same box relative to their image.
        expect = t["boxes"] * torch.tensor([tw / img.shape[-1], th / img.shape[-2]] * 2)
        assert torch.allclose(t_targets[i]["boxes"], expect, atol=1e-4)


def test_level_pairs_use_the_student_scale(teacher_ckpt):
    teacher, _, _ = load_detector(teacher_ckpt)
    student = build_detector(tiny_spec(TEACHER))
    pairs = Distiller(student, teacher, "imitation", student_scale=0.5, log=lambda *a: None).pairs
    # A stride-s student level at half resolution covers 2s teacher pixels.
    assert [(p.student, p.teacher, p.stride) for p in pairs] == [("0", "1", 8), ("1", "2", 16), ("2", "3", 32),
                                                                ("3", "pool", 64)]


LOW_RES_RECIPES = {
    "imitation,fgd": ("distill_imitation", "distill_fgd"),
    # ROI distillation: the teacher's head scores the student's proposals mapped to full resolution.
    "chen2017": ("distill_imitation", "distill_chen_rcn_cls"),
}


@pytest.mark.parametrize("recipe", list(LOW_RES_RECIPES))
def test_low_resolution_student_trains(recipe, tiny_data, teacher_ckpt, tmp_path):
    keys = LOW_RES_RECIPES[recipe]
    out = tmp_path / "run"
    logs = []
    args = train_args(tiny_data, out, "--arch", TEACHER, "--teacher", teacher_ckpt, "--student-scale", 0.5,
                      "--recipe", recipe, "--imitation-mask", "boxes", "--iterations", 2, "--no-eval")
    summary = train(train_config(vars(build_parser().parse_args(args))), log=logs.append)
    assert summary["iterations"] == 2
    _, spec, _ = load_detector(str(out / "model_final.pth"))
    assert (spec.min_size, spec.max_size) == (SIZE // 2, SIZE // 2)  # the student keeps its low resolution
    records = [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["kind"] == "train"]
    assert len(records) == 2
    for key in keys:
        assert all(key in r and math.isfinite(r[key]) for r in records), key
    if recipe == "chen2017":
        assert any("RPN distillation off" in line for line in logs)  # anchor grids differ between resolutions
    assert json.load(open(out / "config.json"))["student_scale"] == 0.5


def test_student_scale_needs_a_teacher(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="student-scale needs a teacher"):
        main(["--debug", *train_args(tiny_data, tmp_path / "x", "--student-scale", 0.5, "--iterations", 1)])
