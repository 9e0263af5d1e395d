"""Each op's interface is declared once (kdops/_registry.py Op): the C++ schemas, the C++ autograd's saved
tensors and the Triton op agree with it, and the public function and the reference take its arguments,
keyword-only after the leading tensors, in schema order."""

import importlib
import inspect
import pathlib
import re

import pytest
import torch

import kdops
from kdops import _registry
from support.backends import require_backend

OPS = ["attention_masks", "bounded_regression", "box_masks", "cwd_loss", "feature_imitation", "fgd_feature_pass",
       "fgd_focal_loss", "gc_context", "ld_loss", "pkd_loss", "quality_focal_kd", "relation_mse",
       "soft_binary_cross_entropy", "soft_cross_entropy"]
NOT_OP_ARGUMENTS = {"backend", "return_terms", "validate"}  # public-only options
AUTOGRAD = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "autograd"


def _spec(name):
    return importlib.import_module(f"kdops.ops.{name}").OP_SPEC


def _schema(namespace, name):
    return str(getattr(getattr(torch.ops, namespace), name).default._schema).split("::", 1)[1][len(name):]


def test_every_op_module_is_registered():
    assert sorted(_registry.OPS) == OPS
    assert all(_registry.OPS[name] is _spec(name) for name in OPS)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("namespace", [pytest.param("kdops", marks=require_backend("cpu")), "kdops_triton"])
def test_schemas_match_the_declaration(name, namespace):
    spec = _spec(name)
    assert spec.name == name
    assert _schema(namespace, name) == str(torch._C.parse_schema("x" + spec.schema))[1:]
    if spec.backward_schema is not None:
        assert _schema(namespace, name + "_backward") == str(torch._C.parse_schema("x" + spec.backward_schema))[1:]


def _cpp_saved(name):
    """The names of csrc/autograd/<op>.cpp's `enum Saved { kStudent, kTeacherSpatial, ..., kCount }`, in order."""
    text = (AUTOGRAD / f"{name}.cpp").read_text()
    body = re.search(r"enum Saved \{(.*?)\};", text, re.S).group(1)
    names = [item.strip() for item in body.split(",") if item.strip()]
    assert names[-1] == "kCount", names
    return [re.sub(r"(?<!^)(?=[A-Z])", "_", n[1:]).lower() for n in names[:-1]]  # kTeacherSpatial -> teacher_spatial


@pytest.mark.parametrize("name", [n for n in OPS if n != "box_masks"])  # box_masks has no autograd
def test_the_cpp_autograd_saves_what_the_declaration_names_in_its_order(name):
    """The C++ autograd saves and reads its tensors by the names of this enum (in_saved_order, s[kName]);
    the backward op takes them in the same order after the output gradients."""
    spec = _spec(name)
    assert _cpp_saved(name) == list(spec.saved)
    assert [a for a in spec.backward_args if a in spec.saved] == [s for s in spec.saved if s in spec.backward_args]


@pytest.mark.parametrize("name", OPS)
def test_public_and_reference_take_the_schema_arguments(name):
    spec = _spec(name)
    reference = getattr(importlib.import_module(f"kdops.reference.{name}"), name)
    params = inspect.signature(reference).parameters.values()
    positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    keyword = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
    if name != "feature_imitation":  # its op takes integer codes; the reference, their names
        assert positional + keyword == list(spec.args)
    assert keyword == list(spec.args[len(positional):])
    public = inspect.signature(getattr(kdops, name)).parameters.values()
    assert [p.name for p in public if p.kind == p.KEYWORD_ONLY and p.name not in NOT_OP_ARGUMENTS] == keyword
