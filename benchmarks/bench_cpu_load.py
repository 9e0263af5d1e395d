"""Benchmark: the CPU kernels on shared cores. kdops cpu and torch.compile(reference), fwd + bwd at P3,
each timed on an idle machine and with KDOPS_BENCH_LOAD_PROCS (default 2) busy background processes
(`while True: pass`, the shape of a data loader's workers), idle and loaded back to back per case.

    python -m pytest benchmarks/bench_cpu_load.py --benchmark-enable --benchmark-json=load.json

The cases are the per-op benchmarks' own (same inputs, same step, same group, so idle and loaded
timings sit in one table); the test id and extra_info["load"] say which load a timing ran under. Only for CPU runs: on a GPU the background load does not matter.
"""

import os
import subprocess
import sys

import pytest

import bench_cwd_loss
import bench_feature_imitation
import bench_fgd_feature_pass
import bench_pkd_loss
from common import ON_GPU, implementations

pytestmark = pytest.mark.skipif(ON_GPU, reason="measures CPU kernels against a CPU background load")

CASES = {
    "feature_imitation": bench_feature_imitation.test_feature_imitation,
    "cwd_loss": bench_cwd_loss.test_cwd_loss,
    "pkd_loss": bench_pkd_loss.test_pkd_loss,
    "fgd_feature_pass": bench_fgd_feature_pass.test_fgd_feature_pass,
}
IMPLEMENTATIONS = [i for i in implementations() if i in ("compiled", "cpu")]
LOADS = ("idle", "loaded")


def _busy_processes():
    return int(os.environ.get("KDOPS_BENCH_LOAD_PROCS", "2"))


@pytest.fixture
def background(request):
    """Starts the busy processes for a "loaded" case and stops them (by their own pids) afterwards."""
    procs = []
    if request.param == "loaded":
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(_busy_processes())]
    try:
        yield request.param
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("background", LOADS, indirect=True)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("op", list(CASES))
def test_cpu_under_load(benchmark, op, impl, background):
    CASES[op](benchmark, "P3", 2, "fp32", impl)
    benchmark.extra_info.update(load=background, background_processes=_busy_processes() if background == "loaded"
                                else 0)
