"""Backend selection, availability report, and the pure-Python fallback when the extension is missing."""

import os
import subprocess
import sys

import pytest
import torch

import kdops
from kdops import _backend


def test_available_backends_reports_every_backend():
    report = kdops.available_backends()
    assert set(report) == set(kdops.BACKENDS)
    assert report["reference"] == "available"
    for name, status in report.items():
        assert isinstance(status, str) and status, name


def test_automatic_choice_on_cpu():
    expected = "cpu" if kdops.available_backends()["cpu"] == "available" else "reference"
    assert _backend.resolve("feature_imitation", torch.device("cpu")) == expected


def test_explicit_backend_never_falls_back():
    with pytest.raises(kdops.BackendUnavailableError, match="needs CUDA tensors"):
        _backend.resolve("feature_imitation", torch.device("cpu"), "cuda")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if _backend._triton_installed():
        with pytest.raises(kdops.BackendUnavailableError, match="TRITON_INTERPRET=1"):
            _backend.resolve("feature_imitation", torch.device("cpu"), "triton")


def _run(code, **env):
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)


def test_import_without_extension_warns_once_and_uses_reference():
    code = (
        "import sys, warnings\n"
        "sys.modules['kdops._C'] = None  # as if the extension had never been built\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, kdops\n"
        "    import kdops.nn\n"
        "msgs = [str(w.message) for w in caught if 'kdops' in str(w.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'pip install --no-build-isolation -e .' in msgs[0], msgs[0]\n"
        "s = torch.randn(2, 3, 4, 5, requires_grad=True)\n"
        "kdops.feature_imitation(s, torch.randn(2, 3, 4, 5)).backward()\n"
        "assert s.grad is not None\n"
        "assert kdops.available_backends()['cpu'].startswith('native extension not loaded')\n"
        "try:\n"
        "    kdops.feature_imitation(s, s.detach(), backend='cpu')\n"
        "except kdops.BackendUnavailableError as e:\n"
        "    print('ERR', e)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "ERR kdops.feature_imitation: backend 'cpu' cannot run" in result.stdout


def test_no_extension_variable_disables_native_kernels_quietly():
    result = _run("import kdops; print(kdops.available_backends()['cpu'])", KDOPS_NO_EXTENSION="1")
    assert result.returncode == 0, result.stderr
    assert "KDOPS_NO_EXTENSION" in result.stdout
    assert "RuntimeWarning" not in result.stderr
