#!/usr/bin/env bash
# One call on a GPU machine: build the extension (CUDA kernels for TORCH_CUDA_ARCH_LIST, default 9.0),
# run the GPU tests (CUDA and Triton parity), run every benchmark, and write into OUTDIR:
#   build.log  backends.json  gpu_tests.log  benchmarks.json  benchmarks.md  benchmarks.png  preferred.json
# Usage: bash benchmarks/gpu_run.sh OUTDIR      (the device tool: bash benchmarks/gpu_run.sh "$OUT")
# Wheels the machine lacks (e.g. pycocotools) may be carried in .whl/ and are installed first.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_run.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
# The CUDA emulator (tests/support/cuda_emu/__init__.py) is for machines without a GPU; here the real kernels run.
export KDOPS_TEST_CUDA_EMU=0 PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if compgen -G ".whl/*.whl" > /dev/null; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/kdops-site .whl/*.whl && \
    export PYTHONPATH=/tmp/kdops-site:${PYTHONPATH:-}
fi
status=0
python -m pip install --no-build-isolation --no-deps -e . > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
python -c "import json, torch, kdops; print(json.dumps({'device': torch.cuda.get_device_name(), **kdops.available_backends()}, indent=2))" \
  | tee "$out/backends.json"
python -m pytest tests -q -m "cuda or triton" -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -15 || status=1
[ "${PIPESTATUS[0]}" = 0 ] || status=1
python -m pytest benchmarks -q --benchmark-enable --benchmark-json="$out/benchmarks.json" -p no:cacheprovider \
  2>&1 | tail -5 || status=1
python benchmarks/report.py "$out/benchmarks.json" --out "$out" || status=1
exit $status
