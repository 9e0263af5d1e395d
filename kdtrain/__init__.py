"""kdtrain: knowledge-distillation trainer for torchvision detectors.

Every distillation loss comes from ``kdops``; kdtrain only does the plumbing
(shared transform, level pairing, box mapping, proposals, weights, logging).
"""

__version__ = "0.1.0"
