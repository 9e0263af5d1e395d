"""Every image is decoded before a run starts: a corrupt or truncated file fails at once, named; reruns are cached."""

import json
import os
import shutil

import pytest
from PIL import Image

from kdtrain.cli import main
from kdtrain.data import image_check
from kdtrain.data.coco import DatasetError
from kdtrain.data.image_check import CACHE_FILE, check_images

from kdtrain_testutil import train_args


def _truncate(path, keep=0.4):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])
    with Image.open(path) as im:  # the header still reads: only a full decode finds it
        assert im.size == (64, 64)


@pytest.fixture
def images(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("KDTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "images"
    shutil.copytree(tiny_data["val"]["images"], folder)
    return folder


def test_truncated_and_garbage_images_are_all_named(images, tmp_path):
    _truncate(images / "000001.png")
    (images / "000002.png").write_bytes(b"not a png")
    paths = sorted(str(p) for p in images.iterdir())
    with pytest.raises(DatasetError, match=r"cannot read images .*000001.png \(OSError: .*truncated.*000002.png"):
        check_images(paths, progress=False)
    cached = json.load(open(tmp_path / "cache" / CACHE_FILE))
    assert sorted(cached) == sorted(os.path.abspath(p) for p in paths if not p.endswith(("1.png", "2.png")))


def test_a_rerun_decodes_only_what_changed(images, monkeypatch):
    paths = sorted(str(p) for p in images.iterdir())
    check_images(paths, progress=False)
    decoded = []
    real = image_check._decode
    monkeypatch.setattr(image_check, "_decode", lambda p: decoded.append(p) or real(p))
    check_images(paths, progress=False)
    assert decoded == []
    _truncate(images / "000003.png")  # a new size (and mtime): checked again
    with pytest.raises(DatasetError, match="000003.png"):
        check_images(paths, progress=False)
    assert [os.path.basename(p) for p in decoded] == ["000003.png"]


def test_the_progress_bar_follows_no_progress(images, tmp_path, capsys):
    paths = sorted(str(p) for p in images.iterdir())
    check_images(paths, progress=False, cache_dir=str(tmp_path / "a"))
    assert "check images" not in capsys.readouterr().err
    check_images(paths, progress=True, cache_dir=str(tmp_path / "b"))
    assert "check images" in capsys.readouterr().err


def test_a_truncated_val_image_stops_train_before_the_first_iteration(tiny_data, images, tmp_path, capsys):
    _truncate(images / "000002.png")
    data = dict(tiny_data, val={"images": str(images), "ann": tiny_data["val"]["ann"]})
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(train_args(data, out, "--iterations", 2))
    assert e.value.code == 2 and "000002.png" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists()


def test_a_truncated_image_stops_pseudo_label_before_inference(teacher_ckpt, images, tmp_path, capsys):
    _truncate(images / "000000.png", keep=0.1)  # 90% cut: the header check pseudo-label had let it pass
    with pytest.raises(SystemExit) as e:
        main(["pseudo-label", "--teacher", teacher_ckpt, "--images", str(images), "--output",
              str(tmp_path / "p.json"), "--workers", "0", "--no-progress"])
    assert e.value.code == 2 and "000000.png" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()
