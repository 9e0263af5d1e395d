"""`python -m kdtrain visualize`: one readable PNG per image and level pair, numbers from kdops."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from kdtrain_testutil import STUDENT, tiny_spec

import kdops
from kdtrain.cli import main
from kdtrain.data.coco import CocoDetection
from kdtrain.distill.levels import LevelPair
from kdtrain.engine import export_student
from kdtrain.models import build_detector
from kdtrain.visualize import imitation_error, level_maps, render_level


@pytest.fixture(scope="module")
def student_ckpt(tiny_data, tmp_path_factory):
    torch.manual_seed(1)
    spec = tiny_spec(STUDENT)
    path = str(tmp_path_factory.mktemp("student") / "model_final.pth")
    export_student(build_detector(spec), spec, CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"]),
                   path)
    return path


def _args(tiny_data, student, teacher, out, *extra):
    return ["visualize", "--student", student, "--teacher", teacher, "--images", tiny_data["val"]["images"],
            "--ann", tiny_data["val"]["ann"], "--output-dir", str(out), "--device", "cpu", "--no-progress",
            *map(str, extra)]


def test_writes_one_readable_png_per_image_and_level_pair(tiny_data, student_ckpt, teacher_ckpt, tmp_path, capsys):
    assert main(_args(tiny_data, student_ckpt, teacher_ckpt, tmp_path, "--num-images", 1)) == 0
    # MobileNetV3-320 levels 0, 1 (stride 32) and pool (64) pair with ResNet-18 levels 3 and pool.
    first = CocoDetection(tiny_data["val"]["images"], tiny_data["val"]["ann"]).images[0]["file_name"]
    stem = os.path.splitext(first)[0]
    expected = {f"{stem}_s0_t3.png", f"{stem}_s1_t3.png", f"{stem}_spool_tpool.png"}
    assert set(os.listdir(tmp_path)) == expected
    for name in expected:
        with Image.open(tmp_path / name) as im:
            im.verify()
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width >= 1200 and im.height >= 600
            pixels = np.asarray(im.convert("L"))
        assert pixels.std() > 10  # drawn panels, not a blank canvas
    assert "3 pictures written" in capsys.readouterr().out


def test_maps_are_the_kdops_values(tiny_data):
    torch.manual_seed(0)
    s, t = torch.randn(1, 16, 6, 8), torch.randn(1, 16, 6, 8).abs()
    boxes = torch.tensor([[8.0, 8.0, 40.0, 24.0]])
    maps = level_maps(s, t, boxes, LevelPair("0", "1", 8), temperature=0.5)
    t_spatial, t_channel = kdops.attention_masks(t, temperature=0.5)
    np.testing.assert_allclose(maps.teacher_spatial, t_spatial[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(maps.teacher_channel, t_channel[0].numpy(), rtol=1e-6)
    assert maps.student_spatial.mean() == pytest.approx(1.0, rel=1e-5)
    fg, bg = kdops.box_masks([boxes / 8], (6, 8))
    np.testing.assert_array_equal(maps.fg, fg[0].numpy())
    np.testing.assert_array_equal(maps.bg, bg[0].numpy())
    assert maps.fg[1:4, 1:6].min() > 0 and maps.fg[5].max() == 0  # the box's cells, and a row below it
    # The error map's mean is the PKD loss of the pair: the map splits that loss over the pixels.
    assert maps.error.shape == (6, 8) and maps.error.min() >= 0
    assert maps.error.mean() == pytest.approx(float(kdops.pkd_loss(s, t)), rel=1e-4)
    assert maps.error_mean == pytest.approx(float(kdops.pkd_loss(s, t)), rel=1e-6)
    # Identical maps (up to scale and offset) do not differ.
    error, _, _ = imitation_error(3 * t + 1, t)
    assert float(error.max()) < 1e-6


def test_channel_counts_may_differ(tmp_path):
    torch.manual_seed(0)
    s, t = torch.randn(1, 8, 5, 5), torch.randn(1, 32, 4, 4)  # a cell off too, as ceil-rounded levels can be
    maps = level_maps(s, t, torch.zeros(0, 4), LevelPair("a", "b", 16), temperature=0.5)
    assert maps.student_channel.shape == (8,) and maps.teacher_channel.shape == (32,)
    assert maps.student_spatial.shape == (5, 5) and maps.teacher_spatial.shape == (4, 4)
    assert maps.error is None and "8 channels" in maps.error_note and "32" in maps.error_note
    assert maps.fg.max() == 0 and maps.bg.sum() == pytest.approx(1.0)  # no boxes: all background
    path = render_level(maps, np.zeros((64, 64, 3)), np.zeros((0, 4)), [], "no boxes", str(tmp_path / "x.png"), 0.5)
    with Image.open(path) as im:
        assert im.width >= 1200


def test_the_error_aligns_the_maps_as_training_does():
    """Crop (training's alignment, except SSD): the common top-left cells are compared, the teacher's other cells
    are NaN; resize (SSD): the student is resized onto the teacher (was: always resized)."""
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 5, 6), torch.randn(1, 4, 6, 6)
    error, mean, _ = imitation_error(s, t, "crop")
    assert error.shape == (1, 6, 6) and error[0, 5].isnan().all() and not error[0, :5].isnan().any()
    assert mean == pytest.approx(float(kdops.pkd_loss(s, t[..., :5, :])), rel=1e-6)
    assert float(error[0, :5].mean()) == pytest.approx(mean, rel=1e-4)
    error, mean, _ = imitation_error(s, t, "resize")
    resized = torch.nn.functional.interpolate(s, size=(6, 6), mode="bilinear", align_corners=False)
    assert not error.isnan().any() and mean == pytest.approx(float(kdops.pkd_loss(resized, t)), rel=1e-6)


def test_one_cell_maps_have_no_error_map():
    error, mean, note = imitation_error(torch.randn(1, 4, 1, 1), torch.randn(1, 4, 1, 1))
    assert error is None and mean is None and "1-cell" in note


@pytest.mark.parametrize("extra, message", [
    (["--num-images", "0"], "--num-images: must be an integer > 0, got 0"),
    (["--temperature", "0"], "--temperature: must be a number > 0, got 0.0"),
])
def test_bad_values_name_the_flag(tiny_data, teacher_ckpt, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main(_args(tiny_data, teacher_ckpt, teacher_ckpt, tmp_path, *extra))
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_checkpoint_names_the_flag(tiny_data, teacher_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(_args(tiny_data, str(tmp_path / "none.pth"), teacher_ckpt, tmp_path / "out"))
    assert e.value.code == 2 and f"--student: no such file: {tmp_path / 'none.pth'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
