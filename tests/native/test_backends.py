"""Backend selection, availability report, and the pure-Python fallback when the extension is missing."""

import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch

import kdops
from kdops import _backend, _registry


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


def test_a_test_backend_runs_only_when_named():
    """kdops._registry.register_test_backend (the CUDA emulator's hook): backend=<name> routes to its
    namespace's ops once its why_not allows; it is never chosen automatically."""
    reasons = {"cwd_loss": "nothing registered yet"}
    lib = _registry.register_test_backend("routing_probe", "kdops_routing_probe",
                                          lambda op, device: reasons.get(op))
    s, t = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    with pytest.raises(kdops.BackendUnavailableError,
                       match="kdops.cwd_loss: backend 'routing_probe' cannot run: nothing registered yet"):
        kdops.cwd_loss(s, t, backend="routing_probe")
    reasons.clear()
    with pytest.raises(NotImplementedError, match="kdops_routing_probe::cwd_loss"):  # routed, but no kernel
        kdops.cwd_loss(s, t, backend="routing_probe")
    assert _backend.resolve("cwd_loss", torch.device("cpu")) in ("cpu", "reference")
    with pytest.raises(ValueError, match="'cpu' is a kdops backend"):
        _backend.add_test_backend("cpu", _backend.TestBackend("kdops", lambda op, device: None))
    del lib


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



def _registered_ops():
    return sorted({n.split(".")[0] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith(("kdops::", "kdops_triton::"))})


@pytest.mark.parametrize("qualname", _registered_ops())
def test_a_raw_call_mixing_meta_and_cpu_tensors_is_a_device_error(qualname):
    """One meta tensor among CPU ones routes the call to the Meta key: it must raise, naming the argument,
    rather than answer with the fake kernel's uninitialised CPU tensors."""
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default
    args, tensor_names = [], []

    def tensor(arg_name):
        tensor_names.append(arg_name)
        return torch.zeros(1, device="cpu" if len(tensor_names) == 1 else "meta")

    for a in op._schema.arguments:
        kind = str(a.type).replace("Optional[", "").rstrip("]?")
        if kind in ("Tensor[]", "List[Tensor"):
            args.append([tensor(f"{a.name}[0]"), tensor(f"{a.name}[1]")])
        else:
            value = {"float": 0.5, "bool": False, "str": "mse"}.get(kind, 1)
            args.append(tensor(a.name) if kind == "Tensor" else value)
    if len(tensor_names) < 2:
        pytest.skip("one tensor argument: nothing to mix")
    with pytest.raises(RuntimeError, match=re.escape(f"{tensor_names[0]} is on cpu but {tensor_names[1]} is on meta")):
        op(*args)


@pytest.mark.parametrize("namespace", ["kdops", "kdops_triton"])
def test_a_raw_call_on_meta_tensors_only_still_answers(namespace):
    if not hasattr(torch.ops, namespace) or not hasattr(getattr(torch.ops, namespace), "bounded_regression"):
        pytest.skip(f"{namespace} is not registered")
    x = torch.empty(5, 4, device="meta")
    loss, norm = getattr(torch.ops, namespace).bounded_regression(x, x, x, None, 0.0)
    assert loss.device.type == norm.device.type == "meta" and loss.shape == ()


def test_triton_launches_on_the_tensors_device():
    """Triton launches on the current device: the Triton ops make the tensors' GPU current first."""
    assert isinstance(_registry.device_of((torch.zeros(1), 2.0)), contextlib.nullcontext)  # CPU: nothing to do
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    s, t = torch.randn(2, 3, 4, 5, device="cuda:1"), torch.randn(2, 3, 4, 5, device="cuda:1")
    with torch.cuda.device(0):
        loss = kdops.feature_imitation(s, t, backend="triton")
    torch.testing.assert_close(loss.cpu(), kdops.feature_imitation(s.cpu(), t.cpu(), backend="reference"))
