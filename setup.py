"""Build script for kdops' native extension (kdops._C).

What is built (`plan_build`, tested in tests/native/test_build_plan.py without compiling):
  KDOPS_NO_EXTENSION=1   nothing native: pure Python (the reference and Triton backends)
  KDOPS_NO_CUDA=1        the C++ CPU kernels only
  FORCE_CUDA=1           the CUDA kernels too, even with no GPU visible (needs a toolkit and a CUDA torch)
  TORCH_CUDA_ARCH_LIST   GPU architectures (torch's variable); setting it asks for the CUDA kernels too
  otherwise              the CUDA kernels when a toolkit is found, torch is a CUDA build and a GPU is
                         visible (compiled for the visible GPUs); else the CPU kernels and one line saying
                         how to get the CUDA kernels
With the CUDA kernels asked for but no GPU to detect architectures from, DEFAULT_CUDA_ARCH_LIST is used.
Other knobs: CUDA_HOME (the toolkit; when unset it is found from nvcc's real location), MAX_JOBS
(parallel compile jobs, read by ninja through torch).

Objects live in build/<variant>/ inside the checkout, so a second `pip install -e .` (or one after a
`git pull`) recompiles only what changed (ninja). Each compiled unit is reported as `[k/n] file`: on the
terminal even under pip's quiet default (through /dev/tty when there is one) and on stderr.
"""

import dataclasses
import functools
import glob
import os
import re
import shutil
import sys
import threading
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
# A100 (sm_80 code also runs on 8.6/8.9) and Hopper, plus PTX that newer GPUs compile at load time.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
# Per-operator ATen headers, as PyTorch's own build uses them: torch's headers then skip <ATen/Functions.h>
# (every operator's declaration), and a source that includes it or <ATen/ATen.h> fails to compile (include
# <ATen/ops/<name>.h> for at::<name>). Also in CMakeLists.txt.
PER_OPERATOR_HEADERS = ["-DAT_PER_OPERATOR_HEADERS", "-DTORCH_ASSERT_ONLY_METHOD_OPERATORS"]
CUDA_HINT = ('for the CUDA kernels too, build with FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" '
             "(the architectures of your GPUs)")


class BuildConfigError(RuntimeError):
    """The build switches ask for something this machine cannot build."""


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    native: bool            # build kdops._C at all
    cuda: bool              # with the CUDA kernels
    arch_list: str = None   # TORCH_CUDA_ARCH_LIST to compile for; None: torch detects the visible GPUs
    note: str = ""          # the one line the user sees about this choice

    @property
    def variant(self) -> str:
        return "cuda" if self.cuda else "cpu"


def _flag(env, name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def plan_build(env, toolkit: bool, torch_cuda: bool, gpu_visible: bool) -> BuildPlan:
    """What to build, from the environment and three facts about the machine (pure: no torch, no I/O)."""
    if _flag(env, "KDOPS_NO_EXTENSION"):
        return BuildPlan(False, False, note="KDOPS_NO_EXTENSION=1: pure Python (reference and Triton backends)")
    force, no_cuda = _flag(env, "FORCE_CUDA"), _flag(env, "KDOPS_NO_CUDA")
    arch_list = env.get("TORCH_CUDA_ARCH_LIST", "").strip() or None
    if force and no_cuda:
        raise BuildConfigError("FORCE_CUDA=1 and KDOPS_NO_CUDA=1 contradict each other: unset one of them")
    if no_cuda:
        return BuildPlan(True, False, note="KDOPS_NO_CUDA=1: the CPU kernels only")
    if force and not toolkit:
        raise BuildConfigError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the folder "
                               "that holds bin/nvcc, or unset FORCE_CUDA for the CPU kernels only")
    if force and not torch_cuda:
        raise BuildConfigError("FORCE_CUDA=1 but the installed torch is a CPU-only build: install a CUDA "
                               "build of torch, or unset FORCE_CUDA for the CPU kernels only")
    asked = force or arch_list is not None
    if toolkit and torch_cuda and (asked or gpu_visible):
        if arch_list is None and not gpu_visible:
            arch_list = DEFAULT_CUDA_ARCH_LIST
        archs = arch_list or "the visible GPUs"
        return BuildPlan(True, True, arch_list, note=f"the CPU and CUDA kernels (architectures: {archs})")
    if not toolkit:
        why = "no CUDA toolkit found (set CUDA_HOME)"
    elif not torch_cuda:
        why = "torch is a CPU-only build"
    else:
        why = "no GPU visible"
    return BuildPlan(True, False, note=f"the CPU kernels only ({why}); {CUDA_HINT}")


def _nvcc_toolkit_root():
    """Return the toolkit that `nvcc` really belongs to, or None.

    `nvcc` may be a symlink or a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`);
    torch's own guess from `which nvcc` would then be /usr/local, which fails at link time.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith(b"#!"):  # a wrapper script: follow the path it execs
        match = re.search(rb"(/\S+?/bin/nvcc)\b", head)
        if match is None:
            return None
        nvcc = os.path.realpath(match.group(1).decode())
    root = os.path.dirname(os.path.dirname(nvcc))
    return root if os.path.isdir(os.path.join(root, "include")) else None


def find_cuda_home():
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), _nvcc_toolkit_root(),
                      "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return None


class _Progress:
    """Shows ninja's `[k/n]` lines as `kdops build [k/n] csrc/...cpp` while the extension compiles.

    pip captures the build's output and shows none of it by default, so the lines also go to the
    controlling terminal when there is one. ninja's full output still reaches stdout (pip -v, logs).
    """

    STATUS = re.compile(rb"^\[(\d+)/(\d+)\] .*?(?:-c |\s)(\S+\.(?:cpp|cu))\b")

    @functools.cached_property
    def tty(self):
        try:
            return open("/dev/tty", "w")
        except OSError:  # no controlling terminal (CI, a pipe)
            return None

    def say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if self.tty is not None:
            self.tty.write("\r" + line + "\n")  # \r: start of the line, past pip's spinner
            self.tty.flush()

    def run(self, build):
        """Call build() with fd 1 piped through a reader that reports each compiled unit."""
        sys.stdout.flush()
        read_end, write_end = os.pipe()
        saved_stdout = os.dup(1)
        os.dup2(write_end, 1)
        os.close(write_end)
        start = time.monotonic()
        reader = threading.Thread(target=self._relay, args=(read_end, saved_stdout, start), daemon=True)
        reader.start()
        try:
            build()
        finally:
            sys.stdout.flush()
            os.dup2(saved_stdout, 1)  # closes the pipe's last write end: the reader sees EOF
            reader.join()
            os.close(saved_stdout)
            self.say(f"kdops build: done in {time.monotonic() - start:.0f} s")

    def _relay(self, read_end, out_fd, start):
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                os.write(out_fd, line)
                match = self.STATUS.match(line)
                if match:
                    done, total, source = match.groups()
                    source = os.path.relpath(source.decode(errors="replace"), ROOT)
                    self.say(f"kdops build [{done.decode()}/{total.decode()}] {source} "
                             f"({time.monotonic() - start:.0f} s)")


PROGRESS = _Progress()


def _sources(cuda: bool):
    patterns = ["*.cpp", "ops/*.cpp", "autograd/*.cpp", "cpu/*.cpp"] + (["cuda/*.cu"] if cuda else [])
    return sorted(path for pattern in patterns for path in glob.glob(os.path.join("csrc", pattern)))


def _extension(plan: BuildPlan):
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # No -std flag: torch's build helper picks the standard its headers need (C++17 or C++20).
    # -g0: Python's CFLAGS ask for -g, and the debug info of torch's templates was half the compile time.
    # -fno-trapping-math: no FP exceptions are observed, so float compares/selects (clamps, masks) can be
    # vectorised instead of compiled to branches (4-6x on the exp-heavy loss kernels). NaN still propagates.
    cxx_flags = ["-O3", "-g0", "-fopenmp-simd", "-fno-trapping-math", "-DKDOPS_EXTENSION_BUILD", *PER_OPERATOR_HEADERS]
    link_flags = []
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        # at::parallel_for is inline code that parallelises only when the *extension* is compiled with
        # OpenMP; without -fopenmp every CPU kernel silently runs on one thread. The libgomp.so.1 this
        # links against resolves at run time to the copy torch has already loaded (same soname).
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    extra = {"cxx": cxx_flags}
    if plan.cuda:
        cxx_flags.append("-DKDOPS_WITH_CUDA")
        extra["nvcc"] = ["-O3", "-lineinfo", "-DKDOPS_WITH_CUDA", "-DKDOPS_EXTENSION_BUILD", *PER_OPERATOR_HEADERS]
    extension = (CUDAExtension if plan.cuda else CppExtension)(
        name="kdops._C", sources=_sources(plan.cuda), include_dirs=[os.path.join(ROOT, "csrc", "include")],
        extra_compile_args=extra, extra_link_args=link_flags)

    class Build(BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            # Persistent objects (pip's editable build would use a fresh temporary folder each time).
            self.build_temp = os.path.join(ROOT, "build", plan.variant)

        def build_extensions(self):
            PROGRESS.say(f"kdops build: {plan.note}")
            PROGRESS.run(super().build_extensions)

    return [extension], {"build_ext": Build.with_options(use_ninja=True)}


def _plan_for_this_machine(env) -> BuildPlan:
    """plan_build with the machine's facts; exports the toolkit and architectures torch's builder reads."""
    if _flag(env, "KDOPS_NO_EXTENSION"):
        return plan_build(env, toolkit=False, torch_cuda=False, gpu_visible=False)  # no torch needed
    cuda_home = find_cuda_home()
    if cuda_home is not None:
        env["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension is imported: it reads it once
    import torch

    torch_cuda = torch.version.cuda is not None
    plan = plan_build(env, toolkit=cuda_home is not None, torch_cuda=torch_cuda,
                      gpu_visible=torch_cuda and torch.cuda.is_available())
    if plan.arch_list is not None:
        env["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
    return plan


def main():
    from setuptools import setup

    try:
        plan = _plan_for_this_machine(os.environ)
    except BuildConfigError as exc:
        sys.exit(f"kdops build: {exc}")
    if not plan.native:
        print(f"kdops build: {plan.note}", file=sys.stderr)
    ext_modules, cmdclass = _extension(plan) if plan.native else ([], {})
    setup(ext_modules=ext_modules, cmdclass=cmdclass)


if __name__ == "__main__":
    main()
