"""kdops/_layout.py and csrc/include/kdops/layout.h name the same columns in the same order."""

import pathlib
import re

import pytest

from kdops import _layout

HEADER = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "include" / "kdops" / "layout.h"
COUNTS = {"kStats", "kPartials", "kSoftmaxes"}  # a trailing enumerator that counts the others


def _enum(namespace: str, name: str):
    text = HEADER.read_text()
    block = re.search(rf"namespace {namespace} {{(.*?)}}  // namespace {namespace}", text, re.S).group(1)
    body = re.search(rf"enum {name} : int {{(.*?)}};", block, re.S).group(1)
    names = [item.split("=")[0].strip() for item in body.split(",")]
    return [n for n in names if n not in COUNTS]


@pytest.mark.parametrize("namespace,enum,columns", [
    ("soft_ce", "Stat", _layout.SOFT_CE_STATS),
    ("cwd", "Stat", _layout.CWD_STATS),
    ("pkd", "Stat", _layout.PKD_STATS),
    ("imitation", "Loss", _layout.LOSSES),
    ("imitation", "Normalize", _layout.NORMALIZERS),
    ("ld", "Normalize", _layout.LD_NORMALIZERS),
    ("qfkd", "Normalize", _layout.QFKD_NORMALIZERS),
    ("feature_pass", "Partial", _layout.FEATURE_PASS_PARTIALS),
    ("feature_pass", "Softmax", _layout.FEATURE_PASS_SOFTMAXES),
])
def test_python_mirrors_the_cpp_header(namespace, enum, columns):
    cpp = [n[1:].lower() for n in _enum(namespace, enum)]  # kLogSum1 -> logsum1
    assert cpp == [c.replace("_", "") for c in columns]
