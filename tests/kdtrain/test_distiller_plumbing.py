"""The distillation plumbing, each fact checked on real torchvision models: shared input, frozen teacher, Chen 2017's
sampling, RPN distillation, weights and warm-up, adaptation layers, term cost, one-stage students."""

import pytest
import torch
from torchvision.models import detection

from kdtrain.data.coco import CocoDetection, collate
from kdtrain.distill.distiller import Distiller
from kdtrain.engine import export_student
from kdtrain.models import build_detector, load_detector

from kdtrain_testutil import TINY_KWARGS, tiny_spec


@pytest.fixture(scope="module")
def batch(tiny_data):
    ds = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"], train=False)
    images, targets = collate([ds[0], ds[1]])
    return list(images), list(targets)


def _pair(student_arch="fasterrcnn_mobilenet_v3_large_320_fpn", teacher_arch="fasterrcnn_resnet18_fpn"):
    torch.manual_seed(0)
    return build_detector(tiny_spec(student_arch)), build_detector(tiny_spec(teacher_arch))


def test_teacher_sees_the_students_padded_batch(batch):
    student, teacher = _pair()
    seen = {}
    student.backbone.register_forward_pre_hook(lambda m, a: seen.__setitem__("student", a[0]))
    teacher.backbone.register_forward_pre_hook(lambda m, a: seen.__setitem__("teacher", a[0]))
    # Give the teacher a different transform: it must not be used.
    teacher.transform.min_size = (32,)
    d = Distiller(student, teacher, "imitation").train()
    d(*batch, 0)
    assert seen["teacher"] is seen["student"]


def test_teacher_is_frozen_eval_and_without_grad(batch):
    student, teacher = _pair()
    bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running_mean = bn.running_mean.clone()
    d = Distiller(student, teacher, "imitation").train()
    grad_mode = []
    teacher.backbone.register_forward_hook(lambda m, a, out: grad_mode.append(torch.is_grad_enabled()))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    sum(d(*batch, 0).values()).backward()
    assert grad_mode == [False]
    assert torch.equal(bn.running_mean, running_mean)
    assert all(p.grad is None for p in teacher.parameters())
    # The teacher is not a parameter of the trainable module (nor in its state_dict).
    assert not any(k.startswith("_teacher") or "teacher." in k for k in d.state_dict())
    assert sum(p.numel() for p in d.parameters()) < sum(p.numel() for p in student.parameters()) + 1e6


def test_chen2017_runs_the_teachers_box_head_on_the_students_sampled_proposals(batch):
    student, teacher = _pair()
    calls = {"select": 0}
    original = student.roi_heads.select_training_samples

    def spy(*a, **k):
        calls["select"] += 1
        return original(*a, **k)

    student.roi_heads.select_training_samples = spy
    seen = {}
    student.roi_heads.box_roi_pool.register_forward_pre_hook(lambda m, a: seen.__setitem__("s", [p.clone() for p in a[1]]))
    teacher.roi_heads.box_roi_pool.register_forward_pre_hook(lambda m, a: seen.__setitem__("t", [p.clone() for p in a[1]]))
    d = Distiller(student, teacher, "chen2017").train()
    losses = d(*batch, 0)
    assert calls["select"] == 1
    assert len(seen["s"]) == len(seen["t"]) == 2
    for s, t in zip(seen["s"], seen["t"]):
        assert torch.equal(s, t)
    # Per image: the sampler's box_batch_size_per_image rows (fewer only if proposals run out).
    assert sum(len(p) for p in seen["s"]) <= 2 * TINY_KWARGS["box_batch_size_per_image"]
    assert {"distill_chen_rcn_cls", "distill_chen_rcn_reg", "loss_classifier", "loss_box_reg"} <= set(losses)


def test_rpn_distillation_only_when_anchor_layouts_match(batch):
    messages = []
    student, teacher = _pair()  # MobileNetV3-320 anchors differ from ResNet-FPN's
    d = Distiller(student, teacher, "chen2017", log=messages.append).train()
    assert not d.rpn_distill and "chen_rpn" not in d.terms
    assert any("RPN distillation off" in m and "anchor" in m for m in messages)

    student, teacher = _pair("fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn")
    d = Distiller(student, teacher, "chen2017", log=messages.append).train()
    assert d.rpn_distill
    losses = d(*batch, 0)
    assert "distill_chen_rpn_cls" in losses and torch.isfinite(losses["distill_chen_rpn_cls"])


def test_each_term_weighted_logged_separately_with_warmup(batch):
    student, teacher = _pair()
    d = Distiller(student, teacher, "imitation", weights="imitation=2.0", warmup_iters=10).train()
    losses = d(*batch, 0)
    raw = d.last_raw["imitation"]
    assert raw > 0
    assert losses["distill_imitation"].item() == pytest.approx(raw * 2.0 * 0.1, rel=1e-5)
    losses = d(*batch, 50)
    assert losses["distill_imitation"].item() == pytest.approx(d.last_raw["imitation"] * 2.0, rel=1e-5)
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= set(losses)


def test_adaptation_layers_train_and_are_dropped_on_export(batch, tiny_data, tmp_path):
    student, teacher = _pair()
    d = Distiller(student, teacher, "imitation").train()
    adapt = [n for n, p in d.named_parameters() if n.startswith("terms.")]
    assert adapt, "the imitation term must own trainable adaptation layers"
    sum(d(*batch, 0).values()).backward()
    assert all(p.grad is not None for n, p in d.named_parameters() if n.startswith("terms."))
    path = tmp_path / "model_final.pth"
    spec = tiny_spec()
    export_student(d.student, spec, CocoDetection(tiny_data["val"]["images"], tiny_data["val"]["ann"]), str(path))
    state = torch.load(path, weights_only=False)["model_state"]
    assert not any(k.startswith("terms.") or "adapt" in k for k in state)
    plain = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=6,
                                                            min_size=64, max_size=64, **TINY_KWARGS)
    plain.load_state_dict(state, strict=True)  # plain torchvision, no kdtrain classes involved
    reloaded, _, _ = load_detector(str(path))
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, state[k])


def test_missing_teacher_and_unknown_recipe_are_clear():
    student, _ = _pair()
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller(student, None, "imitation")
    with pytest.raises(ValueError, match="unknown recipe 'hint'"):
        Distiller(student, None, "hint")


def test_term_cost_measurement_reports_each_term(batch):
    from kdtrain.distill.cost import measure_step_and_terms

    student, teacher = _pair()
    d = Distiller(student, teacher, "imitation")
    costs = measure_step_and_terms(d, *batch, repeats=1)
    assert set(costs) == {"step", "imitation"}
    assert 0 < costs["imitation"] < costs["step"]
    assert d.last_context is None and not d.profile  # nothing from profiling stays alive


def test_one_stage_students_train_with_feature_distillation(batch):
    from kdtrain.models import ModelSpec

    teacher = build_detector(tiny_spec("fasterrcnn_resnet18_fpn"))
    for arch in ("retinanet_resnet50_fpn", "fcos_resnet50_fpn"):
        torch.manual_seed(0)
        # One-stage detectors take none of the Faster R-CNN head arguments of tiny_spec.
        student = build_detector(ModelSpec(arch, 6, min_size=64, max_size=64))
        d = Distiller(student, teacher, "imitation").train()
        # RetinaNet/FCOS levels (strides 8..128) pair with ResNet-FPN 8..64 by stride.
        assert [p.stride for p in d.pairs] == [8, 16, 32, 64]
        losses = d(*batch, 0)
        assert "distill_imitation" in losses and all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
