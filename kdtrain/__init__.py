"""kdtrain: knowledge-distillation trainer for torchvision detectors.

Every distillation loss comes from ``kdops``; kdtrain only does the plumbing
(shared transform, level pairing, box mapping, proposals, weights, logging).
"""

import os

# OpenMP threads that spin while waiting make CPU training 5-10x slower as soon as anything else
# runs on the machine (measured on 2 cores: a ResNet-18-FPN step went from 1.3 s to 7.5 s beside
# one compiler process). Passive waiting costs nothing measurable when the cores are free. It must
# be set before torch (and its OpenMP runtime) is loaded; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
