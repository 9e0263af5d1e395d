"""The mgd recipe (kdops.nn.MGDLoss per stride-paired level): from the CLI, its per-family presets, a resumed run
bit-exact with an uninterrupted one (the masks' generator state is in the checkpoint), and YOLO students."""

import json
import math

import pytest
import torch

from kdops.nn.maps_distiller import crop_to_common
from kdops.nn.mgd import RandomPixelMask
from kdops.nn.pairing import Level
from kdtrain.cli import main
from kdtrain.distill import terms as T
from kdtrain.distill.context import DistillContext
from kdtrain.distill.distiller import Distiller
from kdtrain.metrics_log import read_jsonl
from kdtrain.models import ModelSpec, build_detector, load_detector

from kdtrain_testutil import SIZE, Killed, kill_after_checkpoint, train_args
from test_yolo import MISSING, offline  # noqa: F401 (offline: the network-refusing fixture of the YOLO tests)


def _train_records(out):
    return [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["kind"] == "train"]


def test_mgd_trains_and_evaluates_from_the_cli(tiny_data, teacher_ckpt, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_data, out, "--iterations", 3, "--recipe", "mgd", "--teacher", teacher_ckpt)) == 0
    records = _train_records(out)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["distill_mgd"]) and r["distill_mgd"] > 0 for r in records)
    assert 0.0 <= json.load(open(out / "eval.json"))["mAP"] <= 1.0


def test_mgd_resume_is_bit_exact(tiny_data, teacher_ckpt, tmp_path, monkeypatch):
    """Killed after its checkpoint at iteration 3 and resumed, the run's records and final weights equal the
    uninterrupted run's bit for bit. A resume that loses the mask state draws other masks and differs,
    so the equality rests on the checkpoint's mask state."""
    def args(out):
        return train_args(tiny_data, out, "--iterations", 5, "--checkpoint-every", 3, "--no-eval", "--recipe", "mgd",
                          "--teacher", teacher_ckpt)

    def killed_at_3(out):
        with monkeypatch.context() as m:
            kill_after_checkpoint(m, 3)
            with pytest.raises(Killed):
                main(args(out))

    whole, parts, lost = tmp_path / "whole", tmp_path / "parts", tmp_path / "lost"
    assert main(args(whole)) == 0
    killed_at_3(parts)
    state = torch.load(parts / "checkpoint_last.pth", weights_only=True)["distill_state"]
    masks = {k: v for k, v in state.items() if k.endswith("masks._extra_state")}
    assert masks and all(v.tolist()[1] == 3 for v in masks.values())  # one draw per level per iteration
    assert main(args(parts) + ["--resume"]) == 0

    a = torch.load(whole / "model_final.pth", weights_only=True)["model_state"]
    b = torch.load(parts / "model_final.pth", weights_only=True)["model_state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop_time = lambda r: {k: v for k, v in r.items() if k != "seconds_per_iter"}  # noqa: E731
    assert [drop_time(r) for r in _train_records(parts)] == [drop_time(r) for r in _train_records(whole)]

    killed_at_3(lost)
    with monkeypatch.context() as m:
        m.setattr(RandomPixelMask, "set_extra_state", lambda self, state: None)  # the state is not restored
        assert main(args(lost) + ["--resume"]) == 0
    assert [r["distill_mgd"] for r in _train_records(lost)][3:] != [r["distill_mgd"] for r in _train_records(whole)][3:]


@pytest.mark.parametrize("arch,family,alpha,lambda_", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "two_stage", 5e-7, 0.45),
    ("retinanet_resnet50_fpn", "one_stage", 2e-5, 0.65),
    ("fcos_resnet50_fpn", "one_stage", 2e-5, 0.65),
])
def test_the_preset_follows_the_student_family(arch, family, alpha, lambda_, teacher_ckpt):
    """Faster R-CNN takes MGD's two-stage values; RetinaNet, FCOS (and SSD) the one-stage ones. A Faster R-CNN
    teacher distils any of them; the term reaches the student's backbone."""
    teacher, _, _ = load_detector(teacher_ckpt)
    torch.manual_seed(0)
    student = build_detector(ModelSpec(arch, 6, min_size=SIZE, max_size=SIZE))
    distiller = Distiller(student, teacher, "mgd", log=lambda *a: None).train()
    term = distiller.terms["mgd"]
    assert term.family == family
    assert all((m.alpha, m.lambda_) == (alpha, lambda_) for m in term.distiller.losses)
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 48, SIZE)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 2.0, 50.0, 20.0]]), "labels": torch.tensor([2])}]
    losses = distiller(images, targets, 0)
    assert torch.isfinite(losses["distill_mgd"]) and losses["distill_mgd"] > 0
    losses["distill_mgd"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
    assert T.mgd_preset("ssd") == "one_stage"


def test_the_term_is_the_sum_of_the_per_level_losses():
    """As the official distiller adds one loss per FPN level: the mgd term equals the sum of each pair's MGDLoss on
    its maps, with the masks each level draws (a student level of another size: both cut to their common cells)."""
    torch.manual_seed(0)
    s_levels = {"0": Level(8, 8.0), "1": Level(8, 16.0)}
    t_levels = {"0": Level(16, 8.0), "1": Level(16, 16.0), "2": Level(16, 32.0)}
    term = T.MGDTerm(s_levels, t_levels, [("0", "0"), ("1", "1")], family="retinanet")
    s_maps = {"0": torch.randn(2, 8, 8, 8, requires_grad=True), "1": torch.randn(2, 8, 3, 4, requires_grad=True)}
    t_maps = {"0": torch.randn(2, 16, 8, 8), "1": torch.randn(2, 16, 4, 4), "2": torch.randn(2, 16, 2, 2)}
    states = [m.masks.get_extra_state() for m in term.distiller.losses]
    value = term(DistillContext(s_maps, t_maps, [], []))["mgd"]
    for m, state in zip(term.distiller.losses, states):
        m.masks.set_extra_state(state)
    expected = sum(m(*crop_to_common(s_maps[k], t_maps[k])) for k, m in zip("01", term.distiller.losses))
    torch.testing.assert_close(value, expected, rtol=0, atol=0)


# ---- YOLO students (ultralytics) -----------------------------------------------------------------------

@pytest.mark.slow
def test_yolo_student_from_a_torchvision_teacher_with_mgd(offline, teacher_ckpt, monkeypatch, capsys):
    """`kdtrain yolo --recipe mgd` with a kdtrain (torchvision) teacher: its FPN's stride-8/16/32 levels pair with
    the YOLO Detect head's inputs, with the one-stage preset and an align conv where the widths differ."""
    if MISSING is not None:
        pytest.skip(f"ultralytics cannot be imported: {MISSING}")
    from kdtrain.yolo.trainer import DistillationTrainer

    built = []
    attach = DistillationTrainer.attach_distiller

    def spy(self):
        attach(self)
        built.append(self.distiller)
    monkeypatch.setattr(DistillationTrainer, "attach_distiller", spy)
    out = offline["root"] / "mgd"
    code = main(["yolo", "--student", "yolov8n.yaml", "--teacher", teacher_ckpt, "--recipe", "mgd",
                 "--cache-dir", str(out / "cache"), "--output-dir", str(out / "runs"),
                 "--generated-train-images", "6", "--generated-val-images", "2", "--generated-image-size", "64",
                 "--epochs", "1", "--imgsz", "64", "--batch", "2", "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.rindex('{\n  "recipe"'):])
    assert result["recipe"] == "mgd" and 0 <= result["mAP50-95"] <= result["mAP50"] <= 1
    (distiller,) = built
    assert [(p.teacher, p.stride, p.kind) for p in distiller.pairs] == [
        ("backbone:1", 8.0, "mgd"), ("backbone:2", 16.0, "mgd"), ("backbone:3", 32.0, "mgd")]
    assert [m.student_channels for m in distiller.losses] == [64, 128, 256]  # yolov8n's P3-P5 widths
    assert [m.align is not None for m in distiller.losses] == [True, True, False]  # the FPN is 256 wide
    assert all((m.alpha, m.lambda_) == (2e-5, 0.65) for m in distiller.losses)
    assert all(m.masks.draws > 0 for m in distiller.losses)
    assert "kd_loss" in (out / "runs" / "mgd" / "results.csv").read_text().splitlines()[0]
    assert offline["attempts"] == []
