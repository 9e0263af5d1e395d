"""Each op's interface is declared once (kdops/_registry.py Op): the C++ schemas and the Triton op agree with it,
and the public function and the reference take its arguments, keyword-only after the leading tensors, in
schema order."""

import importlib
import inspect

import pytest
import torch

import kdops
from kdops import _registry
from support.backends import require_backend

OPS = ["attention_masks", "bounded_regression", "box_masks", "cwd_loss", "feature_imitation", "fgd_feature_pass",
       "fgd_focal_loss", "gc_context", "pkd_loss", "relation_mse", "soft_binary_cross_entropy", "soft_cross_entropy"]
NOT_OP_ARGUMENTS = {"backend", "return_terms", "validate"}  # public-only options


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
