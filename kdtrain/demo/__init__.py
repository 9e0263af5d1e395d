"""The built-in offline demo: ``run_demo`` runs the variant that ``DemoConfig.variant`` names.

- ``kdtrain.demo.common``: the cached dataset and teacher, student runs, averaging, results table/plot;
- ``kdtrain.demo.standard``: student without vs with distillation;
- ``kdtrain.demo.label_scarce``: two-step pseudo-label distillation vs supervised on few labels.

The variants import only ``common``; the shared pieces are re-exported here.
"""

from __future__ import annotations

from kdtrain.config import CHOICES, DemoConfig
from kdtrain.demo.common import (FAST_HEADS, average_runs, budget_caption, cache_key, distill,
                                 prepare_data_and_teacher, run_record, student_config, write_results)
from kdtrain.demo.label_scarce import run_label_scarce_demo
from kdtrain.demo.standard import profile_terms, run_standard_demo
from kdtrain.errors import UsageError

VARIANTS = {"standard": run_standard_demo, "label-scarce": run_label_scarce_demo}

__all__ = ["DemoConfig", "FAST_HEADS", "VARIANTS", "average_runs", "budget_caption", "cache_key", "distill",
           "prepare_data_and_teacher", "profile_terms", "run_demo", "run_record", "student_config", "write_results"]


def run_demo(d: DemoConfig, log=print) -> dict:
    if d.variant not in VARIANTS:
        raise UsageError(f"DemoConfig.variant must be one of {', '.join(CHOICES['variant'])}, got {d.variant!r}")
    return VARIANTS[d.variant](d, log)
