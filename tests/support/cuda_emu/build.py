"""Builds the CUDA emulation library (test-only, docs/testing.md "The CUDA emulator").

Every csrc/cuda/*.cu (and its .cuh headers) is rewritten into build/cuda_emu/src/ and compiled by the
host C++ compiler against tests/support/cuda_emu/include, whose cuda_runtime.h and c10/cuda/*.h shadow
the real ones:
- `kernel<T><<<grid, block, smem, stream>>>(args)` becomes `::kdemu::launch("kernel<T>", "file:line",
  ::kdemu::Config(grid, block, smem, stream), kernel<T>, args)`;
- `__shared__ T x[n];` becomes `static T x[n];` plus its registration (refilled with garbage per block);
- `TORCH_LIBRARY_IMPL(kdops, CUDA, m)` becomes `TORCH_LIBRARY_IMPL(kdops_emu, CPU, m)`, and each
  `m.impl("op", &fn)` registers `kdemu::Guarded<&fn>::call` (guard-page memory, launch-error check).
Line numbers are kept (`#line`), so compiler errors and the emulator's messages name the .cu lines.
selftest.cu (kernels that break CUDA's rules on purpose, tests/native/test_cuda_emulator.py) is built
into the same library through the same rewriting.

    python tests/support/cuda_emu/build.py   # builds (cached under build/cuda_emu), prints the library path
"""

import glob
import os
import re
import sys

EMU = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(EMU)))
CSRC = os.path.join(ROOT, "csrc")
BUILD = os.path.join(ROOT, "build", "cuda_emu")
NAME = "kdops_cuda_emu"
NAMESPACE = "kdops_emu"


def _matching(text: str, start: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes text[start] (== open_)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced {open_}{close} at offset {start}")


def _kernel_name_start(text: str, end: int) -> int:
    """Start of `name<template args>` that ends at text[end] (exclusive), scanning backwards."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":  # template arguments, possibly nested
        depth = 0
        while i > 0:
            i -= 1
            depth += text[i] == ">"
            depth -= text[i] == "<"
            if depth == 0:
                break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def _rewrite_launches(text: str, path: str) -> str:
    out, pos = [], 0
    while True:
        at = text.find("<<<", pos)
        if at < 0:
            return "".join(out) + text[pos:]
        start = _kernel_name_start(text, at)
        name = text[start:at].strip()
        close = text.index(">>>", at)
        config = text[at + 3:close]
        paren = close + 3
        while text[paren].isspace():
            paren += 1
        if text[paren] != "(":
            raise ValueError(f"{path}: no argument list after the launch of {name}")
        end = _matching(text, paren, "(", ")")
        args = text[paren + 1:end - 1]
        line = text.count("\n", 0, at) + 1
        label = " ".join(name.split())
        call = f'::kdemu::launch("{label}", "{path}:{line}", ::kdemu::Config({config}), {name}'
        out += [text[pos:start], call, ", " + args if args.strip() else args, ")"]
        pos = end


_SHARED = re.compile(r"^(\s*)__shared__\s+([^;]*?)\b(\w+)\s*((?:\[[^\]]*\]\s*)*);", re.M)


def _rewrite(text: str, path: str) -> str:
    if re.search(r"extern\s+__shared__", text):
        raise ValueError(f"{path}: dynamic (extern) __shared__ memory is not emulated")
    text = _SHARED.sub(lambda m: f"{m[1]}static {m[2]}{m[3]}{m[4]}; static const bool kdemu_shared_{m[3]} = "
                                 f"::kdemu::shared_region(&{m[3]}, sizeof({m[3]}));", text)
    text = _rewrite_launches(text, path)
    text = re.sub(r"TORCH_LIBRARY_IMPL\(\s*kdops\s*,\s*CUDA\s*,", f"TORCH_LIBRARY_IMPL({NAMESPACE}, CPU,", text)
    text = re.sub(r'(m\.impl\(\s*"\w+"\s*,\s*)&?([\w:]+)\s*\)', r"\1&::kdemu::Guarded<&\2>::call)", text)
    text = re.sub(r'#include "\.\./', f'#include "{CSRC}/', text)
    return text


def rewrite_sources() -> list:
    """Writes the rewritten sources (only those that changed, so ninja rebuilds only those); returns the .cpp paths."""
    out_dir = os.path.join(BUILD, "src")
    os.makedirs(out_dir, exist_ok=True)
    sources = []
    cuda = glob.glob(os.path.join(CSRC, "cuda", "*.cu")) + glob.glob(os.path.join(CSRC, "cuda", "*.cuh"))
    for src in sorted(cuda) + [os.path.join(EMU, "selftest.cu")]:
        rel = os.path.relpath(src, ROOT)
        with open(src) as f:
            text = _rewrite(f.read(), rel)
        header = src.endswith(".cuh")
        prefix = "" if header else '#include "kdemu/guarded.h"\n'
        text = f'{prefix}#line 1 "{rel}"\n{text}'
        dest = os.path.join(out_dir, os.path.basename(src) if header else os.path.basename(src)[:-3] + ".cpp")
        if not os.path.exists(dest) or open(dest).read() != text:
            with open(dest + f".{os.getpid()}", "w") as f:  # atomic: another process may be building too
                f.write(text)
            os.replace(dest + f".{os.getpid()}", dest)
        if not header:
            sources.append(dest)
    return sources


def build(verbose: bool = False) -> str:
    """Builds (or reuses) the library and returns its path; does not load it."""
    from torch.utils import cpp_extension

    sources = [os.path.join(EMU, "runtime.cpp")] + rewrite_sources()
    os.environ.setdefault("MAX_JOBS", "2")
    cpp_extension.load(
        name=NAME, sources=sources, build_directory=BUILD, is_python_module=False, with_cuda=False,
        extra_include_paths=[os.path.join(EMU, "include"), os.path.join(CSRC, "include")],
        extra_cflags=["-O1", "-g0", "-Wno-unknown-pragmas"], verbose=verbose)
    return os.path.join(BUILD, NAME + ".so")


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv))
