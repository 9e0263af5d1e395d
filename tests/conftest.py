"""Test set-up shared by every kdops test.

Without a GPU, the Triton kernels run through Triton's CPU interpreter. The variable must be set
before triton.jit decorates the kernels, i.e. before any kdops.triton module is imported.
"""

import os

# Passive OpenMP waiting: the kdtrain tests start several processes (DDP, subprocess runs) on few
# cores, where spinning threads slow everything down several-fold. Set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.pop("KDOPS_BACKEND", None)  # tests choose backends explicitly
