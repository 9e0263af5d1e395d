"""YOLO students distilled inside ultralytics' own training loop (kdtrain.yolo), offline.

ultralytics is optional (AGPL-3.0): the training tests skip, saying so, only when it cannot be
imported. Every test here runs with the socket layer refusing and recording connections and DNS
look-ups, and asserts that none was attempted (fonts, weights, datasets, telemetry).
"""

import json
import os
import socket

import pytest
import torch

from kdtrain.cli import main
from kdtrain.yolo.data import shapes_data_yaml
from kdtrain.yolo.offline import missing_ultralytics

MISSING = missing_ultralytics()
needs_ultralytics = pytest.mark.skipif(MISSING is not None, reason=f"ultralytics cannot be imported: {MISSING}")
TINY = dict(epochs=1, imgsz=64, batch=2, workers=0, device="cpu", seed=0, val=False, verbose=False,
            exist_ok=True)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """Network calls refused and recorded; ultralytics' settings in a temporary folder; tiny shapes data."""
    attempts = []

    def refuse(name):
        def call(*args, **kwargs):
            attempts.append((name, args[1:2] if name == "connect" else args[:1]))
            raise OSError(f"network access in a test: {name}{args[1:2] if name == 'connect' else args[:1]}")
        return call

    root = tmp_path_factory.mktemp("yolo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse("connect"))
        mp.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
        mp.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        mp.setattr(socket, "gethostbyname", refuse("gethostbyname"))
        mp.setenv("YOLO_CONFIG_DIR", str(root / "settings"))
        data = shapes_data_yaml(str(root / "data"), train_images=8, val_images=4, size=96)
        yield {"attempts": attempts, "data": data, "root": root}
    assert attempts == [], f"network access attempted: {attempts}"


def test_coco_boxes_become_normalised_yolo_lines(offline):
    root = os.path.dirname(offline["data"])
    coco = json.load(open(os.path.join(os.path.dirname(root), "coco", "train.json")))
    first = coco["images"][0]
    anns = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    stem = os.path.splitext(first["file_name"])[0]
    lines = open(os.path.join(root, "labels", "train", stem + ".txt")).read().split("\n")[:-1]
    assert len(lines) == len(anns)
    cls, cx, cy, w, h = (float(v) for v in lines[0].split())
    x, y, bw, bh = anns[0]["bbox"]
    assert cls == anns[0]["category_id"] - 1  # the shapes' ids 1..5 -> classes 0..4
    S = first["width"]
    assert (cx * S, cy * S, w * S, h * S) == pytest.approx((x + bw / 2, y + bh / 2, bw, bh), abs=1e-3)
    assert os.path.isfile(os.path.join(root, "images", "train", first["file_name"]))
    assert offline["attempts"] == []


@needs_ultralytics
def test_yolo_boxes_are_image_pixels_per_image(offline):
    from kdtrain.yolo.trainer import yolo_boxes

    batch = {"bboxes": torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.25, 0.75, 0.5, 0.5]]),
             "batch_idx": torch.tensor([1.0, 0.0])}
    boxes = yolo_boxes(batch, (3, 3, 64, 128))  # H 64, W 128
    assert [tuple(b.shape) for b in boxes] == [(1, 4), (1, 4), (0, 4)]
    assert boxes[1].tolist() == [[32.0, 24.0, 96.0, 40.0]]
    assert boxes[0].tolist() == [[0.0, 32.0, 64.0, 64.0]]


@needs_ultralytics
@pytest.mark.parametrize("recipe", ["fgd", pytest.param("imitation", marks=pytest.mark.slow)])
def test_distillation_inside_ultralytics_training(offline, recipe):
    from kdtrain.yolo.trainer import DistillationCriterion, DistillationTrainer

    seen = {}

    class Spy:
        """The trainer's criterion, and on the first training batch the gradients of its kd entry alone."""

        def __init__(self, inner, trainer):
            self.inner, self.trainer = inner, trainer

        def __call__(self, preds, batch):
            loss, items = self.inner(preds, batch)
            if "student" not in seen and loss.requires_grad:
                student, teacher = self.inner.student, self.trainer.teacher
                params = [p for p in student.parameters() if p.requires_grad]
                grads = torch.autograd.grad(loss[-1], params, retain_graph=True, allow_unused=True)
                seen["student"] = sum(float(g.abs().sum()) for g in grads if g is not None)
                seen["teacher_trainable"] = [n for n, p in teacher.named_parameters() if p.requires_grad]
                seen["teacher_training"] = teacher.training
                seen["boxes"] = int(batch["bboxes"].shape[0])
            return loss, items

        def __getattr__(self, name):
            return getattr(self.inner, name)

    class SpyTrainer(DistillationTrainer):
        def attach_distiller(self):
            super().attach_distiller()
            student = self.distiller.student
            assert isinstance(student.criterion, DistillationCriterion)
            student.criterion = Spy(student.criterion, self)

        def remove_distiller(self):  # unwrap the spy first, as the trainer wraps its own criterion
            student = self.distiller.student
            student.criterion = student.criterion.inner
            super().remove_distiller()

    trainer = SpyTrainer(overrides=dict(model="yolov8n.yaml", data=offline["data"], project=str(offline["root"]),
                                        name=recipe, **TINY), teacher="yolov8s.yaml", recipe=recipe)
    trainer.train()

    assert "kd_loss" in trainer.loss_names and float(trainer.tloss["kd_loss"]) > 0
    assert [p.kind for p in trainer.distiller.pairs] == [recipe] * 3  # P3, P4, P5 paired by stride
    assert [p.stride for p in trainer.distiller.pairs] == [8.0, 16.0, 32.0]
    assert seen["boxes"] > 0 and seen["student"] > 0, seen  # the kd term alone reaches the student
    assert seen["teacher_trainable"] == [] and seen["teacher_training"] is False
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert any(p.grad is not None or p.requires_grad for p in trainer.distiller.parameters())
    assert any(g.get("param_group") == "kd" for g in trainer.optimizer.param_groups)
    # Hooks gone and the student's own criterion back once train() returned.
    student = trainer.distiller.student
    for model in (student, trainer.teacher):
        assert all(not m._forward_hooks for m in model.modules())
    assert not isinstance(student.criterion, (DistillationCriterion, Spy))
    assert os.path.isfile(trainer.best)  # a plain YOLO checkpoint (the EMA student) was pickled
    assert offline["attempts"] == []


@needs_ultralytics
@pytest.mark.slow
def test_torchvision_teacher_checkpoint(offline):
    from kdtrain_testutil import TEACHER, tiny_spec

    from kdtrain.models import build_detector
    from kdtrain.yolo.trainer import DistillationTrainer, TorchvisionBackbone

    spec = tiny_spec(TEACHER, num_classes=6)
    path = offline["root"] / "tv_teacher.pth"
    torch.save({"model_spec": spec.to_dict(), "model_state": build_detector(spec).state_dict()}, path)
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=offline["data"], name="tv",
                                                 project=str(offline["root"]), **TINY), teacher=str(path), recipe="pkd")
    trainer.train()
    assert isinstance(trainer.teacher, TorchvisionBackbone)
    # The FPN's stride-8/16/32 levels (its stride-4 and pool levels have no YOLO partner).
    assert [(p.teacher, p.stride) for p in trainer.distiller.pairs] == [("backbone:1", 8.0), ("backbone:2", 16.0),
                                                                         ("backbone:3", 32.0)]
    assert float(trainer.tloss["kd_loss"]) > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert offline["attempts"] == []


@needs_ultralytics
def test_cli_distils_on_the_built_in_data(offline, capsys):
    out = offline["root"] / "cli"
    code = main(["yolo", "--student", "yolov8n.yaml", "--teacher", "yolov8s.yaml", "--recipe", "cwd",
                 "--cache-dir", str(out / "cache"), "--output-dir", str(out / "runs"), "--generated-train-images",
                 "6", "--generated-val-images", "2", "--generated-image-size", "64", "--epochs", "1", "--imgsz",
                 "64", "--batch", "2", "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.rindex('{\n  "recipe"'):])  # the printed summary, after any log lines
    assert result["recipe"] == "cwd" and 0 <= result["mAP50-95"] <= result["mAP50"] <= 1
    assert result["best"] == str(out / "runs" / "cwd" / "weights" / "best.pt") and os.path.isfile(result["best"])
    assert "kd_loss" in (out / "runs" / "cwd" / "results.csv").read_text().splitlines()[0]
    assert offline["attempts"] == []


def test_missing_ultralytics_is_one_line(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ultralytics" else real(name, *a))
    assert main(["yolo", "--teacher", "t.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install ultralytics" in err[0] and "AGPL-3.0" in err[0]


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _yolo_checkpoint(path, extra=None):
    """An ultralytics checkpoint as its trainer writes one (the EMA model in half precision), plus ``extra``."""
    from kdtrain.yolo.offline import import_ultralytics

    import_ultralytics()  # offline, before any ultralytics module
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", verbose=False).half()  # its 80 classes: ultralytics logs nothing
    torch.save({"epoch": -1, "model": None, "ema": model, "updates": 0, "optimizer": None,
                "train_args": {"imgsz": 64}, "date": "2025-01-01", "version": "8", **(extra or {})}, path)
    return str(path)


@needs_ultralytics
@pytest.mark.parametrize("flag", ["--teacher", "--student"])
def test_a_payload_in_a_yolo_checkpoint_never_runs(offline, tmp_path, capsys, flag):
    marker = tmp_path / "ran"
    evil = _yolo_checkpoint(tmp_path / "evil.pt", {"notes": _Payload(marker)})
    other = {"--teacher": ["--student", "yolov8n.yaml"], "--student": ["--teacher", "yolov8s.yaml"]}[flag]
    with pytest.raises(SystemExit) as e:
        main(["yolo", flag, evil, *other, "--data", offline["data"], "--output-dir", str(tmp_path / "runs"),
              "--epochs", "1", "--imgsz", "64", "--batch", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert not marker.exists(), "the payload ran"
    assert e.value.code == 2 and "Traceback" not in err
    assert f"refused to load checkpoint {evil}: it holds builtins.exec, which an ultralytics checkpoint never" in err
    assert offline["attempts"] == []


@needs_ultralytics
def test_a_plain_yolo_checkpoint_passes_the_check_and_python_yaml_tags_are_refused(offline, tmp_path):
    from kdtrain.errors import UsageError
    from kdtrain.yolo.safe_files import check_files

    check_files({"--teacher": _yolo_checkpoint(tmp_path / "good.pt")})  # ultralytics' own classes only
    marker = tmp_path / "ran"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(f"nc: 1\nnames: !!python/object/apply:os.system ['touch {marker}']\n")
    for flag in ("--data", "--student", "--teacher"):
        with pytest.raises(UsageError, match=rf"{flag}: {tagged} is not plain YAML \(could not determine a "
                                             r"constructor for the tag .*python/object/apply:os.system"):
            check_files({flag: str(tagged)})
    assert not marker.exists()
