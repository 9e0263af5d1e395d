"""Shared fixtures: a tiny generated COCO dataset, a tiny trained teacher and a random-init one."""

import os
import tempfile

import pytest
import torch

from kdtrain_testutil import SIZE, TEACHER, TEACHER_ITERATIONS, TINY_KWARGS, tiny_spec

from kdtrain.data.coco import CocoDetection
from kdtrain.data.synthetic import make_shapes_dataset
from kdtrain.config import CACHE_DIR_ENV, TrainConfig
from kdtrain.engine import FINAL, export_student, train
from kdtrain.models import build_detector

# The tests' image-check cache and demo data stay out of the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault(CACHE_DIR_ENV, tempfile.mkdtemp(prefix="kdtrain-test-cache-"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(str(root), train_images=8, val_images=4, size=SIZE, min_obj=6, max_obj=30,
                               max_objects=3, seed=1)


@pytest.fixture(scope="session")
def random_teacher_ckpt(tiny_data, tmp_path_factory):
    """A random-init ResNet-18-FPN teacher saved as a kdtrain export: the distillation check refuses it."""
    torch.manual_seed(0)
    spec = tiny_spec(TEACHER)
    teacher = build_detector(spec)
    path = str(tmp_path_factory.mktemp("random_teacher") / "model_final.pth")
    dataset = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"])
    export_student(teacher, spec, dataset, path)
    return path


@pytest.fixture(scope="session")
def teacher_ckpt(tiny_data, tmp_path_factory):
    """A ResNet-18-FPN teacher trained briefly on the tiny data: plumbing tests need no accuracy, but the
    distillation check at the start of a distilled run refuses a teacher no better than a random network."""
    out = tmp_path_factory.mktemp("teacher")
    train(TrainConfig(train_images=tiny_data["train"]["images"], train_ann=tiny_data["train"]["ann"], arch=TEACHER,
                      min_size=SIZE, max_size=SIZE, model_kwargs=dict(TINY_KWARGS), iterations=TEACHER_ITERATIONS,
                      batch_size=2, lr=0.02, lr_warmup=5, workers=0, output_dir=str(out), progress=False,
                      no_eval=True, threads=2), log=lambda *a, **k: None)
    return str(out / FINAL)
