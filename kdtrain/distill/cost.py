"""What the distillation terms cost inside a training step (forward + backward).

Each term is re-run on a copy of the step's context whose student tensors are
detached leaves, so its backward covers exactly the term (adaptation layers and
kdops ops), not the student network behind it.
"""

from __future__ import annotations

import time

import torch


def _leaf(t):
    return t.detach().requires_grad_(t.is_floating_point()) if torch.is_tensor(t) else t


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_step_and_terms(distiller, images, targets, repeats: int = 3) -> dict:
    """{'step': s, '<term>': s, ...}: median seconds of a whole forward+backward and of each term."""
    device = next(distiller.parameters()).device
    distiller.train()
    distiller.profile = True
    step_times, term_times = [], {name: [] for name in distiller.terms}
    try:
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            loss = sum(distiller(list(images), list(targets), iteration=0).values())
            loss.backward()
            _sync(device)
            step_times.append(time.perf_counter() - start)
            distiller.zero_grad(set_to_none=True)
            ctx = distiller.last_context.with_student_tensors(_leaf)
            distiller.last_context = None
            for name, term in distiller.terms.items():
                _sync(device)
                start = time.perf_counter()
                values = [v for v in term(ctx).values() if torch.is_tensor(v) and v.requires_grad]
                if values:
                    sum(values).backward()
                _sync(device)
                term_times[name].append(time.perf_counter() - start)
            distiller.zero_grad(set_to_none=True)
    finally:
        distiller.profile = False
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"step": median(step_times), **{k: median(v) for k, v in term_times.items()}}
