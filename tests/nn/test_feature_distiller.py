"""kdops.nn.FeatureDistiller: hooks on any nn.Module, pairing, adaptation, every loss kind, DDP, compile."""

import gc
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdops

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"  # the custom-module example
GUIDE = ROOT / "docs" / "feature_distiller.md"  # the torchvision-detector example


class Net(nn.Module):
    """Stages of the given widths and strides, then a classifier (a non-map output to reject)."""

    def __init__(self, widths, strides):
        super().__init__()
        stages, c = [], 3
        for w, s in zip(widths, strides):
            stages.append(nn.Sequential(nn.Conv2d(c, w, 3, stride=s, padding=1), nn.BatchNorm2d(w), nn.ReLU()))
            c = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(c, 5)

    def maps(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x):
        return self.head(self.maps(x)[-1].mean((2, 3)))


def models(seed=0):
    torch.manual_seed(seed)
    # student strides 4, 8; teacher 4, 8, 16 with other channel counts
    return Net([8, 16], [4, 2]), Net([16, 32, 64], [4, 2, 2])


BOXES = [torch.tensor([[4.0, 4.0, 40.0, 30.0], [30.0, 35.0, 63.0, 63.0]]), torch.zeros(0, 4)]
KINDS = ["imitation", ("imitation", {"mask": "boxes", "normalize": "mask"}), ("fgd", {"family": "retinanet"}),
         ("cwd", {"tau": 2.0}), "pkd"]


def hook_count(*nets):
    return sum(len(m._forward_hooks) for net in nets for m in net.modules())


def test_pairs_by_stride_and_hooks_only_paired_modules():
    student, teacher = models()
    x = torch.randn(2, 3, 64, 64)
    d = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"], ["stages.0", "stages.1", "stages.2"],
                                  example_inputs=(x,))
    assert [(p.student, p.teacher, p.stride) for p in d.pairs] == [("stages.0", "stages.0", 4.0),
                                                                    ("stages.1", "stages.1", 8.0)]
    assert hook_count(student) == 2 and hook_count(teacher) == 2  # teacher stage 2 pairs with nothing
    assert student.training and not teacher.training
    # the adaptation layers are the distiller's only parameters
    params = {id(p) for p in d.parameters()}
    assert params == {id(p) for m in d.losses for p in m.parameters()}
    assert not params & {id(p) for p in [*student.parameters(), *teacher.parameters()]}


def test_the_probe_keeps_the_students_modes_and_statistics():
    student, teacher = models()
    student.stages[0].eval()  # e.g. a frozen first stage
    stats = student.stages[1][1].running_mean.clone()
    kdops.nn.FeatureDistiller(student, teacher, "stages.1", example_inputs=torch.randn(2, 3, 64, 64)).remove()
    assert [m.training for m in student.stages] == [False, True] and student.training
    assert torch.equal(student.stages[1][1].running_mean, stats)


def test_low_resolution_student_pairs_by_stride_in_teacher_pixels():
    """A student on half-size inputs: its stride-4 level (8x8 of 32 px) covers 8 teacher pixels and pairs
    with the teacher's stride-8 level; boxes are in the teacher's pixels."""
    student, teacher = models()
    small, full = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    d = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"], ["stages.0", "stages.1", "stages.2"],
                                  example_inputs=(small,), teacher_example_inputs=(full,), loss="fgd")
    assert [(p.student, p.teacher, p.stride) for p in d.pairs] == [("stages.0", "stages.1", 8.0),
                                                                    ("stages.1", "stages.2", 16.0)]
    student(small)
    d.teacher_forward(full)
    out = d(boxes=BOXES)
    with torch.no_grad():
        t = teacher.maps(full)[1]
    torch.testing.assert_close(out["stages.0"], d.losses[0](student.maps(small)[0], t, [b / 8 for b in BOXES]))


def test_stride_of_a_ceil_rounded_map():
    """A 100x168 input gives stride-8 maps of 13x21 cells: the stride is 8, not 100/13."""
    student, teacher = models()
    d = kdops.nn.FeatureDistiller(student, teacher, "stages.1", example_inputs=torch.randn(1, 3, 100, 168),
                                  loss="fgd")
    assert d.pairs[0].stride == 8.0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k if isinstance(k, str) else f"{k[0]}-{sorted(k[1])}")
def test_each_kind_equals_its_module_on_the_same_maps(kind):
    """pair_by='order' with a size mismatch (student stride 8 -> teacher stride 4) and a channel mismatch;
    the value is weight * the kdops.nn module on the resized, adapted student map (PKD: adapted, then
    resized by PKDLoss); gradients reach the student and the distiller but not the teacher."""
    student, teacher = models()
    teacher.train()
    x = torch.randn(2, 3, 64, 64)
    d = kdops.nn.FeatureDistiller(student, teacher, ["stages.1", "stages.0"],
                                  ["stages.0", "stages.1"], example_inputs=(x,), loss=kind, pair_by="order",
                                  weights={"stages.1": 0.5})
    assert [(p.student, p.teacher, p.stride) for p in d.pairs] == [("stages.1", "stages.0", 4.0),
                                                                    ("stages.0", "stages.1", 8.0)]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student(x)
    d.teacher_forward(x)
    out = d(boxes=BOXES)
    assert set(out) == {"stages.1", "stages.0", "total"}

    s_maps = student.maps(x)
    with torch.no_grad():
        t_maps = teacher.maps(x)
    expected = []
    for i, (s, t, stride, w) in enumerate([(s_maps[1], t_maps[0], 4.0, 0.5), (s_maps[0], t_maps[1], 8.0, 1.0)]):
        name = kind if isinstance(kind, str) else kind[0]
        if s.shape[-2:] != t.shape[-2:] and name != "pkd":
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        s, fn = d.adapt[i](s), d.losses[i]
        boxes = [b / stride for b in BOXES]
        if name == "fgd":
            value = fn(s, t, boxes)
        elif kind == KINDS[1]:
            value = fn(s, t, kdops.box_masks(boxes, tuple(t.shape[-2:]))[0] > 0)
        else:
            value = fn(s, t)
        expected.append(w * value)
    torch.testing.assert_close(out["stages.1"], expected[0])
    torch.testing.assert_close(out["stages.0"], expected[1])
    torch.testing.assert_close(out["total"], expected[0] + expected[1])

    out["total"].backward()
    assert all(p.grad is not None for p in student.stages.parameters())
    assert all(p.grad is not None for p in d.parameters())
    m, a = d.losses[1], d.adapt[1]  # the 8 -> 32 channel pair has a 1x1 conv, whatever the kind
    conv = m.adapt if isinstance(m, kdops.nn.HintLoss) else m.align if isinstance(m, kdops.nn.FGDLoss) else a
    assert conv.weight.shape == (32, 8, 1, 1) and conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k if isinstance(k, str) else f"{k[0]}-{sorted(k[1])}")
def test_from_levels_distils_maps_the_caller_passes_as_the_hooks_do(kind):
    """A trainer that computes the maps itself: from_levels builds the hook distiller's pairs and modules
    (the same state_dict layout), and distil on its maps gives the hook path's losses and gradients."""
    student, teacher = models()
    x = torch.randn(2, 3, 64, 64)
    hooked = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"],
                                       ["stages.0", "stages.1", "stages.2"], example_inputs=(x,), loss=kind,
                                       weights={"stages.1": 0.5})
    student(x)
    hooked.teacher_forward(x)
    expected = hooked(boxes=BOXES)
    levels = {"stages.0": (8, 4), "stages.1": kdops.nn.distiller.Level(16, 8.0)}
    teacher_levels = {"stages.0": (16, 4), "stages.1": (32, 8), "stages.2": (64, 16)}
    plain = kdops.nn.FeatureDistiller.from_levels(levels, teacher_levels, loss=kind, weights={"stages.1": 0.5})
    assert plain.pairs == hooked.pairs
    plain.load_state_dict(hooked.state_dict())
    s_maps = student.maps(x)
    with torch.no_grad():
        t_maps = teacher.maps(x)
    out = plain.distil({f"stages.{i}": m for i, m in enumerate(s_maps)},
                       {f"stages.{i}": m for i, m in enumerate(t_maps)}, boxes=BOXES)
    assert out.keys() == expected.keys()
    for k in out:
        torch.testing.assert_close(out[k], expected[k], rtol=0, atol=0)
    g_plain = torch.autograd.grad(out["total"], list(plain.parameters()))
    g_hooked = torch.autograd.grad(expected["total"], list(hooked.parameters()))
    for a, b in zip(g_plain, g_hooked, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="built by from_levels and has no hooks; pass the maps to distil"):
        plain()
    with pytest.raises(KeyError, match="no teacher map for level 'stages.1'"):
        plain.distil({f"stages.{i}": m for i, m in enumerate(s_maps)}, {"stages.0": t_maps[0]}, boxes=BOXES)
    hooked.remove()


def test_ties_and_reduction():
    """Two student and two teacher levels of one stride: "in_order" pairs them k-th with k-th, "first"
    both students with the first teacher level; reduction="mean" averages the weighted pair losses."""
    student = {"a": (4, 8), "b": (4, 8), "c": (4, 16)}
    teacher = {"x": (6, 8), "y": (6, 8), "z": (6, 16)}
    make = kdops.nn.FeatureDistiller.from_levels
    assert [(p.student, p.teacher) for p in make(student, teacher).pairs] == [("a", "x"), ("b", "y"), ("c", "z")]
    assert [(p.student, p.teacher) for p in make(student, teacher, tie="first").pairs] == [
        ("a", "x"), ("b", "x"), ("c", "z")]
    assert kdops.nn.pairing.pair_levels({"a": 8, "b": 8, "c": 8}, {"x": 8, "y": 8}) == [
        ("a", "x"), ("b", "y"), ("c", "y")]  # more students than teachers: the rest take the last
    torch.manual_seed(0)
    summed = make(student, teacher, loss="cwd", weights={"c": 2.0})
    averaged = make(student, teacher, loss="cwd", weights={"c": 2.0}, reduction="mean")
    averaged.load_state_dict(summed.state_dict())
    g = torch.Generator().manual_seed(1)
    s_maps = {k: torch.randn(2, 4, 32 // s, 32 // s, generator=g) for k, (_, s) in student.items()}
    t_maps = {k: torch.randn(2, 6, 32 // s, 32 // s, generator=g) for k, (_, s) in teacher.items()}
    total = summed.distil(s_maps, t_maps)
    torch.testing.assert_close(averaged.distil(s_maps, t_maps)["total"], total["total"] / 3)
    torch.testing.assert_close(total["total"], total["a"] + total["b"] + total["c"])
    with pytest.raises(ValueError, match="tie must be one of"):
        make(student, teacher, tie="last")
    with pytest.raises(ValueError, match="reduction must be one of"):
        make(student, teacher, reduction="max")
    with pytest.raises(ValueError, match="the teacher's level 'x' has no stride; the boxes of fgd"):
        make(student, {"x": 6}, loss="fgd", pair_by="order")
    with pytest.raises(TypeError, match="student's level 'a' must be a Level"):
        make({"a": "wide"}, teacher)


def test_teacher_runs_frozen_in_eval_mode_and_stops_after_its_last_level():
    student, teacher = models()
    x = torch.randn(2, 3, 64, 64)
    ran = []  # hooks registered before the distiller's run first
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: ran.append(name))
             for name, m in (("stages.0", teacher.stages[0]), ("stages.1", teacher.stages[1]), ("head", teacher.head))]
    d = kdops.nn.FeatureDistiller(student, teacher, "stages.0", example_inputs=(x,), loss="cwd")
    assert ran == ["stages.0", "stages.1", "head"]  # the probe runs to the end: it counts each module's calls
    ran.clear()
    bn = teacher.stages[0][1]
    stats = bn.running_mean.clone()
    teacher.train()  # e.g. the user's model.train() on everything
    student(x)
    d.teacher_forward(x)
    assert not teacher.training
    assert torch.equal(bn.running_mean, stats)  # eval mode: BatchNorm statistics untouched
    assert ran == ["stages.0"]                   # stopped once its only recorded module had run
    assert torch.isfinite(d()["total"])
    for h in hooks:
        h.remove()


def test_maps_are_dropped_after_the_loss():
    student, teacher = models()
    x = torch.randn(2, 3, 64, 64)
    d = kdops.nn.FeatureDistiller(student, teacher, "stages.0", example_inputs=(x,), loss="pkd")
    student(x)
    d.teacher_forward(x)
    d()["total"].backward()
    with pytest.raises(RuntimeError, match="no student map recorded for level 'stages.0'; run the student forward"):
        d()
    student(x)
    with pytest.raises(RuntimeError, match="no teacher map recorded .* call teacher_forward"):
        d()
    # the failed call dropped the student's map too: nothing survives a loss call
    d.teacher_forward(x)
    with pytest.raises(RuntimeError, match="no student map recorded"):
        d()


def test_remove_and_context_manager_leave_no_hooks():
    student, teacher = models()
    x = torch.randn(1, 3, 64, 64)
    before = hook_count(student, teacher)
    d = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"], example_inputs=(x,))
    assert hook_count(student, teacher) == before + 4
    d.remove()
    assert hook_count(student, teacher) == before
    with pytest.raises(RuntimeError, match="hooks were removed"):
        d.teacher_forward(x)
    with kdops.nn.FeatureDistiller(student, teacher, "stages.0", example_inputs=(x,)) as d2:
        assert hook_count(student, teacher) == before + 2
    assert hook_count(student, teacher) == before
    with pytest.raises(RuntimeError, match="hooks were removed"):
        d2()
    # a dropped distiller takes its hooks with it
    kdops.nn.FeatureDistiller(student, teacher, "stages.0", example_inputs=(x,))
    gc.collect()
    assert hook_count(student, teacher) == before


def test_wrong_arguments_raise_naming_them():
    student, teacher = models()
    x = torch.randn(1, 3, 64, 64)

    def make(layers="stages.0", teacher_layers=None, **kw):
        return kdops.nn.FeatureDistiller(student, teacher, layers, teacher_layers, example_inputs=(x,), **kw)

    with pytest.raises(ValueError, match=r"student_layers names 'stages.9', which is no module of Net; .*'stages.0'"):
        make("stages.9")
    with pytest.raises(ValueError, match="teacher_layers names 'neck'"):
        make(teacher_layers="neck")
    with pytest.raises(TypeError, match=r"student's level 'head' must be an \(N, C, H, W\) tensor .* shape \(1, 5\)"):
        make("head", "stages.0", pair_by="order")
    with pytest.raises(ValueError, match=r"student's module 'stages.0' returned a tensor of shape \(1, 8, 16, 16\), "
                                         "which has no key 'p3'"):
        make("stages.0:p3")
    with pytest.raises(ValueError, match="student_layers selected no module"):
        make(lambda path, m: False)
    with pytest.raises(ValueError, match="loss must be one of"):
        make(loss="kl")
    with pytest.raises(ValueError, match=r"cwd takes the options \('tau',\), got \['temperature'\]"):
        make(loss=("cwd", {"temperature": 1.0}))
    with pytest.raises(ValueError, match="mask must be 'none' or 'boxes'"):
        make(loss=("imitation", {"mask": "gt"}))
    with pytest.raises(ValueError, match=r"loss gives no kind for the paired student levels \['stages.1'\]"):
        make(["stages.0", "stages.1"], loss={"stages.0": "cwd"})
    with pytest.raises(ValueError, match=r"weights names \['stages.1'\]"):
        make(weights={"stages.1": 2.0})
    with pytest.raises(TypeError, match="nn.DataParallel is not supported; use DistributedDataParallel"):
        kdops.nn.FeatureDistiller(nn.DataParallel(student), teacher, "stages.0", example_inputs=(x,))
    with pytest.raises(ValueError, match="student and teacher are the same module"):
        kdops.nn.FeatureDistiller(student, student, "stages.0", example_inputs=(x,))
    with pytest.raises(ValueError, match="pair_by must be one of"):
        make(pair_by="name")
    with pytest.raises(ValueError, match="no student level pairs with a teacher level by stride: student stages.0 "
                                         "16x16 stride 4, teacher stages.2 4x4 stride 16"):
        make("stages.0", "stages.2")
    with pytest.raises(ValueError, match="pair_by='order' needs as many"):
        make(["stages.0", "stages.1"], "stages.0", pair_by="order")
    with pytest.raises(ValueError, match="level 'stages.0' is 16x16 on a 50x50 input: no whole stride"):
        make(image_size=(50, 50))
    d = make(loss="fgd")
    student(x)
    d.teacher_forward(x)
    with pytest.raises(ValueError, match=r"fgd loss of level 'stages.0' needs boxes=, one \(K_i, 4\) tensor per "
                                         r"image \(1 images\)"):
        d()
    d.remove()


def test_dict_outputs_and_callable_selectors():
    """A module returning a dict of maps: "name" takes every entry, "name:key" one; a callable picks modules."""

    class Pyramid(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.body = Net([width, width], [4, 2])

        def forward(self, x):
            return dict(zip(("p2", "p3"), self.body.maps(x)))

    class Detector(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.backbone = Pyramid(width)

        def forward(self, x):
            return sum(f.mean() for f in self.backbone(x).values())

    torch.manual_seed(0)
    student, teacher = Detector(8), Detector(16)
    x = torch.randn(2, 3, 32, 32)
    d = kdops.nn.FeatureDistiller(student, teacher, "backbone", example_inputs=(x,))
    assert [(p.student, p.teacher) for p in d.pairs] == [("backbone:p2", "backbone:p2"), ("backbone:p3", "backbone:p3")]
    d.remove()
    d = kdops.nn.FeatureDistiller(student, teacher, "backbone:p3", example_inputs=(x,), loss="cwd")
    assert [p.student for p in d.pairs] == ["backbone:p3"]
    d.remove()
    # "" is the model itself: distilling a backbone's dict output names the levels by their keys
    d = kdops.nn.FeatureDistiller(student.backbone, teacher.backbone, "", example_inputs=(x,))
    assert [(p.student, p.teacher, p.stride) for p in d.pairs] == [("p2", "p2", 4.0), ("p3", "p3", 8.0)]
    student.backbone(x)
    d.teacher_forward(x)
    assert set(d()) == {"p2", "p3", "total"}
    d.remove()
    d = kdops.nn.FeatureDistiller(student, teacher, lambda path, m: path.endswith("stages.1"), example_inputs=(x,))
    assert [p.student for p in d.pairs] == ["backbone.body.stages.1"]
    student(x)
    d.teacher_forward(x)
    assert torch.isfinite(d()["total"])
    with pytest.raises(ValueError, match=r"student's module 'backbone' returned a dict with keys \['p2', 'p3'\], "
                                         "which has no key 'p5'"):
        kdops.nn.FeatureDistiller(student, teacher, "backbone:p5", example_inputs=(x,))


def test_torch_compile_of_the_student():
    student, teacher = models()
    x = torch.randn(2, 3, 64, 64)
    d = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"], example_inputs=(x,),
                                  loss={"stages.0": "imitation", "stages.1": "cwd"})
    student(x)
    d.teacher_forward(x)
    eager = d()["total"].detach()
    compiled = torch.compile(student, backend="aot_eager", fullgraph=True)  # the hooks trace without a break
    for _ in range(2):  # the second call runs the cached graph: the hooks must still record
        compiled(x)
        d.teacher_forward(x)
        out = d()
        torch.testing.assert_close(out["total"], eager)
    student.zero_grad()
    compiled(x)
    d.teacher_forward(x)
    d()["total"].backward()
    assert student.stages[0][0].weight.grad is not None and d.losses[0].adapt.weight.grad is not None


def test_ddp_student_and_distiller(tmp_path):
    """One process on gloo: the hooks fire through DDP(student), and DDP(distiller) gives the adaptation
    layers their (all-reduced) gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        student, teacher = models()
        x = torch.randn(2, 3, 64, 64)
        ddp_student = DDP(student)
        d = kdops.nn.FeatureDistiller(ddp_student, teacher, ["stages.0", "stages.1"], example_inputs=(x,),
                                      loss="fgd")
        assert d.student is student
        ddp_distiller = DDP(d)
        ddp_student(x)
        d.teacher_forward(x)
        out = ddp_distiller(boxes=BOXES)
        out["total"].backward()
        assert student.stages[0][0].weight.grad is not None
        assert all(m.align.weight.grad is not None for m in d.losses)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_no_host_sync_in_a_training_step():
    student, teacher = (m.cuda() for m in models())
    x = torch.randn(2, 3, 64, 64, device="cuda")
    boxes = [b.cuda() for b in BOXES]
    d = kdops.nn.FeatureDistiller(student, teacher, ["stages.0", "stages.1"], example_inputs=(x,),
                                  loss={"stages.0": ("imitation", {"mask": "boxes"}), "stages.1": "fgd"}).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        student(x)
        d.teacher_forward(x)
        d(boxes=boxes)["total"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def readme_examples():
    """The README's FeatureDistiller example (a custom module), then docs/feature_distiller.md's (a detector)."""
    section = re.split(r"\n##+ ", README.read_text().split("### Distil any model", 1)[1], maxsplit=1)[0]
    readme, guide = python_blocks(section), python_blocks(GUIDE.read_text())
    assert len(readme) == 1 and len(guide) == 1, (len(readme), len(guide))
    return [(README.name, readme[0]), (f"docs/{GUIDE.name}", guide[0])]


@pytest.mark.parametrize("index", [0, 1], ids=["custom-module", "torchvision-detector"])
def test_readme_examples_run(index, capsys):
    where, block = readme_examples()[index]
    namespace = {"__name__": "readme"}
    exec(compile(block, f"{where} distil example", "exec"), namespace)
    assert torch.isfinite(namespace["losses" if index == 0 else "distill"]["total"])
    if index == 1:  # the pairs the example prints
        printed = capsys.readouterr().out.strip()
        comment = re.search(r"^# (\[\('backbone.*)$", block, flags=re.M).group(1)
        assert printed == comment


def test_crop_alignment_compares_the_cells_that_see_the_same_pixels():
    from kdops.nn.maps_distiller import MapsDistiller
    from kdops.nn.pairing import Level

    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 20, 20)  # a 160 px input at stride 8
    student = torch.randn(2, 8, 24, 24) * 5  # an 80 px input padded to 96, at stride 4 (= 8 teacher pixels)
    student[..., :20, :20] = teacher        # the cells over the image see what the teacher's see
    levels = {"s": Level(8, 8)}, {"t": Level(8, 8)}
    crop = MapsDistiller(*levels, [("s", "t")], loss="cwd", align="crop")
    resize = MapsDistiller(*levels, [("s", "t")], loss="cwd")
    assert float(crop.distil({"s": student}, {"t": teacher})["total"]) == pytest.approx(0.0, abs=1e-5)
    assert float(resize.distil({"s": student}, {"t": teacher})["total"]) > 0.1  # shifted cells and padding
    with pytest.raises(ValueError, match="align must be one of"):
        MapsDistiller(*levels, [("s", "t")], loss="cwd", align="pad")


def _retinanet(seed):
    """A torchvision RetinaNet on a ResNet-18 FPN (P3-P7): its heads run once per FPN level."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, num_classes=3, min_size=128, max_size=128)


def test_a_module_that_runs_once_per_fpn_level_gives_one_level_per_call():
    """RetinaNet's classification head runs once per FPN level: its k calls are k levels in call order, each
    paired with the teacher's call of the same stride (was: one level, the teacher's first call against the
    student's last, resized and distilled without an error)."""
    student, teacher = _retinanet(0), _retinanet(1)
    images = [torch.rand(3, 128, 128)]
    head = "head.classification_head.conv"
    d = kdops.nn.FeatureDistiller(student, teacher, head, example_inputs=(images,), loss="imitation")
    assert [(p.student, p.teacher, p.stride) for p in d.pairs] == [
        (f"{head}#{i}", f"{head}#{i}", 8.0 * 2 ** i) for i in range(5)]
    student.train()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])}]
    task = sum(student(images, targets).values())
    d.teacher_forward(images)
    for level in d._student.maps:  # each student call is recorded against the teacher call of its size
        assert d._student.maps[level].shape == d._teacher.maps[level].shape, level
    losses = d()
    assert set(losses) == {f"{head}#{i}" for i in range(5)} | {"total"}
    (task + losses["total"]).backward()
    assert all(torch.isfinite(p.grad).all() for p in d.parameters() if p.grad is not None)
    student.eval()  # eval and train forwards both run the head 5 times
    with torch.no_grad():
        student(images)
    assert len(d._student.maps) == 5


def test_a_module_that_runs_more_often_than_in_the_probe_raises_naming_it():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.block(x)
            return self.block(x) + y if self.training else y  # twice in training, once in eval (the probe)

    student, teacher = Twice(), Twice()
    x = torch.randn(2, 3, 16, 16)
    d = kdops.nn.FeatureDistiller(student, teacher, "block", example_inputs=(x,), loss="pkd")
    student.train()
    with pytest.raises(RuntimeError, match="the student's module 'block' ran 2 times in one forward, but 1 time"):
        student(x)


@pytest.mark.parametrize("stride", [float("inf"), float("nan"), 0.0, -8.0])
def test_from_levels_refuses_a_stride_that_is_not_finite_and_positive(stride):
    with pytest.raises(TypeError, match="the student's level 'a' must be a Level"):
        kdops.nn.FeatureDistiller.from_levels({"a": (8, stride)}, {"a": (8, 8.0)}, loss="imitation")
