"""docs/performance.md's benchmark command collects every benchmarks/bench_<op>.py (pytest's default collects only
test_*.py files, and then `python -m pytest benchmarks` silently times nothing)."""

import glob
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_benchmark_file_is_collected():
    files = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "benchmarks", "bench_*.py")))
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    assert files and collected == set(files), out.stdout[-2000:] + out.stderr[-2000:]
