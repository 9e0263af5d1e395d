"""Benchmark: kdops.fgd_feature_pass forward + backward (every output feeding the loss, as in FGDLoss),
box masks from ~10 boxes per image. Its fused backends: every one that runs here (cpu; cuda and triton on a GPU);
the reference composes the reference focal loss and two GcBlock context poolings."""

import itertools

import pytest
import torch

import kdops
from common import CHANNELS, DEVICE, batches, dtypes, feature, implementations, levels, pick, run_case
from fgd_common import image_boxes, level_boxes, level_size
from kdops.reference.fgd_feature_pass import fgd_feature_pass as reference

CASES = list(itertools.product(levels(), batches(), dtypes(), implementations()))
WEIGHTS = dict(temperature=0.5, alpha=1e-3, beta=5e-4, gamma=5e-4)  # RetinaNet


@pytest.mark.parametrize("level,batch,dtype,impl", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_fgd_feature_pass(benchmark, level, batch, dtype, impl):
    h, w = level_size(level)
    student = feature((batch, CHANNELS, h, w), dtype, 0, requires_grad=True)
    teacher = feature((batch, CHANNELS, h, w), dtype, 1)
    fg, bg = kdops.box_masks(level_boxes(image_boxes(batch), level), (h, w))
    g = torch.Generator().manual_seed(2)
    weight, bias = (torch.randn(CHANNELS, generator=g) / CHANNELS ** 0.5).to(DEVICE).requires_grad_(), torch.zeros(
        1, device=DEVICE)
    convs = dict(student_gc_weight=weight, student_gc_bias=bias, teacher_gc_weight=weight, teacher_gc_bias=bias)
    out_grads = [torch.randn(batch, CHANNELS, generator=g).to(DEVICE) for _ in range(3)]
    loss_fn = pick(impl, lambda s, t, f, b: reference(s, t, fg=f, bg=b, **convs, **WEIGHTS),
                   lambda backend: lambda s, t, f, b: kdops.fgd_feature_pass(s, t, fg=f, bg=b, **convs, **WEIGHTS,
                                                                             backend=backend))

    def step(s, t, f, b):
        s.grad = None
        loss, _terms, ctx_s, ctx_t, diff_sq, diff_sum = loss_fn(s, t, f, b)
        total = loss + 1e-6 * diff_sq
        for out, grad in zip((ctx_s, ctx_t, diff_sum), out_grads):
            total = total + (out * grad).sum()
        total.backward()

    # Fused: forward reads S and T once; backward reads them once more and writes dS.
    bytes_moved = 5 * student.numel() * student.element_size()
    run_case(benchmark, op="fgd_feature_pass", impl=impl, level=level, batch=batch, dtype=dtype, step=step,
             inputs=(student, teacher, fg, bg), bytes_moved=bytes_moved)
