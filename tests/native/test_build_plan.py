"""setup.py's build decision (plan_build), case by case, without compiling anything."""

import importlib.util
import itertools
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_setup():
    spec = importlib.util.spec_from_file_location("kdops_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: setup() runs under __main__
    return module


setup_py = _load_setup()
plan_build = setup_py.plan_build
DEFAULT = setup_py.DEFAULT_CUDA_ARCH_LIST

MACHINES = list(itertools.product((True, False), repeat=2))  # (toolkit, gpu_visible)


@pytest.mark.parametrize("toolkit,gpu", MACHINES)
def test_no_switches_builds_cuda_only_with_a_toolkit_and_a_visible_gpu(toolkit, gpu):
    plan = plan_build({}, toolkit=toolkit, torch_cuda=True, gpu_visible=gpu)
    assert plan.native
    assert plan.cuda == (toolkit and gpu)
    assert plan.arch_list is None  # torch detects the visible GPUs' architectures
    if not plan.cuda:
        assert "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=" in plan.note  # the one line saying how to get them
        assert ("no CUDA toolkit" in plan.note) == (not toolkit)


@pytest.mark.parametrize("toolkit,gpu", MACHINES)
def test_arch_list_asks_for_cuda_where_a_toolkit_is(toolkit, gpu):
    plan = plan_build({"TORCH_CUDA_ARCH_LIST": "8.6"}, toolkit=toolkit, torch_cuda=True, gpu_visible=gpu)
    assert plan.native and plan.cuda == toolkit
    assert plan.arch_list == ("8.6" if toolkit else None)


@pytest.mark.parametrize("gpu", (True, False))
def test_force_cuda_without_an_arch_list_uses_the_documented_default_when_no_gpu_is_visible(gpu):
    plan = plan_build({"FORCE_CUDA": "1"}, toolkit=True, torch_cuda=True, gpu_visible=gpu)
    assert plan.native and plan.cuda
    assert plan.arch_list == (None if gpu else DEFAULT)
    assert DEFAULT in open(os.path.join(ROOT, "docs", "building.md")).read()  # the build table


@pytest.mark.parametrize("gpu", (True, False))
def test_force_cuda_with_an_arch_list_uses_it(gpu):
    env = {"FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}
    assert plan_build(env, toolkit=True, torch_cuda=True, gpu_visible=gpu).arch_list == "9.0"


@pytest.mark.parametrize("gpu", (True, False))
def test_force_cuda_without_a_toolkit_is_a_clear_error(gpu):
    with pytest.raises(setup_py.BuildConfigError, match="FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME"):
        plan_build({"FORCE_CUDA": "1"}, toolkit=False, torch_cuda=True, gpu_visible=gpu)


def test_force_cuda_with_a_cpu_only_torch_is_a_clear_error():
    with pytest.raises(setup_py.BuildConfigError, match="CPU-only build"):
        plan_build({"FORCE_CUDA": "1"}, toolkit=True, torch_cuda=False, gpu_visible=False)


@pytest.mark.parametrize("toolkit,gpu", MACHINES)
def test_cpu_only_torch_builds_the_cpu_kernels(toolkit, gpu):
    plan = plan_build({}, toolkit=toolkit, torch_cuda=False, gpu_visible=gpu)
    assert plan.native and not plan.cuda


@pytest.mark.parametrize("toolkit,gpu", MACHINES)
@pytest.mark.parametrize("arch", (None, "9.0"))
def test_no_cuda_wins_over_everything_but_force(toolkit, gpu, arch):
    env = {"KDOPS_NO_CUDA": "1", **({"TORCH_CUDA_ARCH_LIST": arch} if arch else {})}
    plan = plan_build(env, toolkit=toolkit, torch_cuda=True, gpu_visible=gpu)
    assert plan.native and not plan.cuda and plan.arch_list is None


def test_no_cuda_and_force_cuda_contradict():
    with pytest.raises(setup_py.BuildConfigError, match="contradict"):
        plan_build({"KDOPS_NO_CUDA": "1", "FORCE_CUDA": "1"}, toolkit=True, torch_cuda=True, gpu_visible=True)


@pytest.mark.parametrize("toolkit,gpu", MACHINES)
@pytest.mark.parametrize("other", ({}, {"FORCE_CUDA": "1"}, {"KDOPS_NO_CUDA": "1"}, {"TORCH_CUDA_ARCH_LIST": "9.0"}))
def test_no_extension_builds_nothing_native_whatever_else_is_set(toolkit, gpu, other):
    plan = plan_build({"KDOPS_NO_EXTENSION": "1", **other}, toolkit=toolkit, torch_cuda=True, gpu_visible=gpu)
    assert not plan.native and not plan.cuda


@pytest.mark.parametrize("value,on", (("1", True), ("true", True), ("ON", True), ("0", False), ("", False)))
def test_switch_values(value, on):
    plan = plan_build({"FORCE_CUDA": value}, toolkit=True, torch_cuda=True, gpu_visible=False)
    assert plan.cuda == on


def test_empty_arch_list_counts_as_unset():
    plan = plan_build({"TORCH_CUDA_ARCH_LIST": " "}, toolkit=True, torch_cuda=True, gpu_visible=False)
    assert not plan.cuda


def test_build_folders_differ_per_variant():
    cpu = plan_build({}, toolkit=False, torch_cuda=True, gpu_visible=False)
    cuda = plan_build({"FORCE_CUDA": "1"}, toolkit=True, torch_cuda=True, gpu_visible=False)
    assert cpu.variant != cuda.variant  # switching variants does not throw away the other's objects


def test_progress_lines_name_each_compiled_unit():
    line = (b"[3/41] c++ -MMD -MF /w/build/cpu/w/csrc/cpu/a.o.d -O3 -c /w/csrc/cpu/cwd_loss.cpp "
            b"-o /w/build/cpu/w/csrc/cpu/cwd_loss.o -fopenmp\n")
    done, total, source = setup_py._Progress.STATUS.match(line).groups()
    assert (done, total, source) == (b"3", b"41", b"/w/csrc/cpu/cwd_loss.cpp")
    nvcc = b"[7/52] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile -c /w/csrc/cuda/box_masks.cu -o x.o"
    assert setup_py._Progress.STATUS.match(nvcc).group(3) == b"/w/csrc/cuda/box_masks.cu"
