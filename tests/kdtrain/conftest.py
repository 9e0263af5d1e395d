"""Shared fixtures: a tiny generated COCO dataset and a tiny random-init teacher."""

import os
import tempfile

import pytest
import torch

from kdtrain_testutil import SIZE, TEACHER, tiny_spec

from kdtrain.data.coco import CocoDetection
from kdtrain.data.synthetic import make_shapes_dataset
from kdtrain.engine import export_student
from kdtrain.config import CACHE_DIR_ENV
from kdtrain.models import build_detector

# The tests' image-check cache and demo data stay out of the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault(CACHE_DIR_ENV, tempfile.mkdtemp(prefix="kdtrain-test-cache-"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(str(root), train_images=8, val_images=4, size=SIZE, min_obj=6, max_obj=30,
                               max_objects=3, seed=1)


@pytest.fixture(scope="session")
def teacher_ckpt(tiny_data, tmp_path_factory):
    """A random-init ResNet-18-FPN teacher saved as a kdtrain export (plumbing tests need no accuracy)."""
    torch.manual_seed(0)
    spec = tiny_spec(TEACHER)
    teacher = build_detector(spec)
    path = str(tmp_path_factory.mktemp("teacher") / "model_final.pth")
    dataset = CocoDetection(tiny_data["train"]["images"], tiny_data["train"]["ann"])
    export_student(teacher, spec, dataset, path)
    return path


