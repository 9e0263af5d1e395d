"""The CUDA emulator (docs/cuda_emulator.md) makes CUDA's rules bite: tests/support/cuda_emu/selftest.cu's
small, partly deliberately wrong kernels, compiled through the same layer as csrc/cuda/*.cu."""

import pytest
import torch

import kdops
from kdops import _registry
from support import cuda_emu, fgd_inputs
from support.backends import require_backend
from support.numerics import assert_close, randn

pytestmark = require_backend(cuda_emu.NAME)


@pytest.fixture(scope="module")
def selftest():
    cuda_emu.load()
    return torch.ops.kdemu_selftest


def test_barrier_not_reached_by_every_thread_is_an_error_not_a_hang(selftest):
    assert torch.equal(selftest.partial_barrier(64, 64), torch.full((64,), 2.0))
    with pytest.raises(RuntimeError, match=r"partial_barrier_kernel.*__syncthreads at tests/support/cuda_emu/selftest.cu:\d+ is "
                                           r"reached by 40 of 64 threads"):
        selftest.partial_barrier(64, 40)


@pytest.mark.parametrize("extra,shift", [(1, 0), (0, 1), (200, 0)])
def test_out_of_bounds_access_is_an_error(selftest, extra, shift):
    x = torch.arange(100, dtype=torch.float32)
    torch.testing.assert_close(selftest.copy(x, 0, 0), x)
    with pytest.raises(RuntimeError, match=r"copy_kernel.*illegal memory access"):
        selftest.copy(x, extra, shift)
    torch.testing.assert_close(selftest.copy(x, 0, 0), x)  # the emulator still works after a fault


def test_uninitialised_shared_memory_reads_nan(selftest):
    assert torch.isnan(selftest.shared_read(False)).all()
    torch.testing.assert_close(selftest.shared_read(True), torch.arange(64.0).repeat(2, 1))


def test_warp_collectives(selftest):
    out = selftest.warp(64)
    lane = torch.arange(64) % 32
    assert torch.equal(out[:, 0], torch.where(lane + 3 < 32, lane + 3, lane) * 10)
    assert torch.equal(out[:, 1], torch.full((64,), 100, dtype=torch.int32))
    assert torch.equal(out[:, 2], torch.full((64,), 0xAAAAAAAA - 2**32, dtype=torch.int32))
    assert torch.equal(out[:, 3], torch.full((64,), 40, dtype=torch.int32))


def test_full_mask_shuffle_in_a_partial_warp_is_an_error(selftest):
    with pytest.raises(RuntimeError, match=r"warp_kernel.*names lane 16 in mask 0xffffffff, but warp 1 has only 16"):
        selftest.warp(48)


def test_blocks_run_in_a_shuffled_order(selftest, monkeypatch):
    monkeypatch.setenv("KDOPS_EMU_REPLAY", "0")  # the result depends on the block order, by design
    order = selftest.block_order(64, True)
    assert sorted(order.tolist()) == list(range(64))
    assert order.tolist() != list(range(64))


@pytest.mark.parametrize("shared", [True, False], ids=["shared-memory", "global-memory"])
def test_a_race_is_an_error(selftest, shared):
    """Every launch runs twice in two block and thread orders and must write the same bytes."""
    with pytest.raises(RuntimeError, match=r"race_kernel.*wrote different bytes in two runs"):
        selftest.race(shared)


def test_invalid_launch_is_an_error(selftest):
    with pytest.raises(RuntimeError, match=r"order_kernel.*a grid dimension is 0"):
        selftest.block_order(0, True)
    with pytest.raises(RuntimeError, match="nothing called cudaGetLastError"):
        selftest.block_order(0, False)


def test_every_cuda_entry_point_is_emulated():
    cuda_emu.load()
    assert len(_registry.OPS) == 14
    for op in _registry.OPS.values():
        assert cuda_emu.has_kernel(op.name), op.name
        if op.backward_schema is not None:
            assert cuda_emu.has_kernel(op.name + "_backward"), op.name


# ---- every CUDA kernel on shapes that stress the launch logic, in every dtype, against the C++ CPU kernels ----
# 4-D features (N, C, H, W): an empty batch, a single element, partial warps and blocks (35 pixels),
# several blocks per row (527 pixels over 256 threads), and grids capped by blocks_for's cap (16900 pixels:
# more than 32 and 64 blocks of 256), so the grid-stride loops go round more than once.
FEATURES = [(0, 3, 4, 5), (1, 1, 1, 1), (1, 2, 5, 7), (2, 3, 17, 31), (1, 1, 130, 130)]
ROWS = [0, 1, 33, 300]  # rows of logits / anchors / boxes: empty, one, a partial warp, several blocks
ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _features(shape, dtype, seed):
    return randn(shape, dtype, "cpu", seed), randn(shape, dtype, "cpu", seed + 1)


def _cwd(backend, shape, dtype, seed):
    s, t = _features(shape, dtype, seed)
    return [s], lambda s: (kdops.cwd_loss(s, t, tau=2.0, backend=backend),)


def _pkd(backend, shape, dtype, seed):
    shape = (2,) + shape[1:] if shape[0] == 1 and shape[2] * shape[3] == 1 else shape  # std needs 2 values
    s, t = _features(shape, dtype, seed)
    return [s, t], lambda s, t: (kdops.pkd_loss(s, t, backend=backend),)


def _imitation(backend, shape, dtype, seed):
    s, t = _features(shape, dtype, seed)
    n, _, h, w = shape
    mask = torch.rand((n, h, w), generator=torch.Generator().manual_seed(seed)).to(dtype)
    return [s], lambda s: (kdops.feature_imitation(s, t, mask=mask, normalize="mask", backend=backend),
                           kdops.feature_imitation(s, t, loss="l1", backend=backend))


def _box_masks(shape, dtype, seed):
    """(fg, bg) of random boxes on an (N, C, H, W) feature's grid (zeros for N = 0)."""
    n, _, h, w = shape
    if n == 0:
        return torch.zeros(0, h, w, dtype=dtype), torch.zeros(0, h, w, dtype=dtype)
    return fgd_inputs.masks(n, h, w, seed, dtype=dtype)


def _focal(backend, shape, dtype, seed):
    s, t = _features(shape, dtype, seed)
    fg, bg = _box_masks(shape, dtype, seed)
    return [s], lambda s: kdops.fgd_focal_loss(s, t, fg=fg, bg=bg, temperature=0.5, return_terms=True,
                                               backend=backend)


def _feature_pass(backend, shape, dtype, seed):
    s, t = _features(shape, dtype, seed)
    fg, bg = _box_masks(shape, dtype, seed)
    c = shape[1]
    w_s, w_t = (randn((1, c, 1, 1), torch.float32, "cpu", seed + k) / c ** 0.5 for k in (2, 3))
    b_s = randn((1,), torch.float32, "cpu", seed + 4)
    return [s, w_s, b_s], lambda s, w_s, b_s: tuple(kdops.fgd_feature_pass(
        s, t, fg=fg, bg=bg, student_gc_weight=w_s, student_gc_bias=b_s, teacher_gc_weight=w_t, backend=backend))


def _relation(backend, shape, dtype, seed):
    s, t = _features(shape, dtype, seed)
    ds, dt = randn(shape[:2], torch.float32, "cpu", seed + 2), randn(shape[:2], torch.float32, "cpu", seed + 3)
    return [s, ds], lambda s, ds: (kdops.relation_mse(s, t, delta_s=ds, delta_t=dt, backend=backend),)


def _attention(backend, shape, dtype, seed):
    return [randn(shape, dtype, "cpu", seed)], lambda f: kdops.attention_masks(f, temperature=0.5, backend=backend)


def _gc(backend, shape, dtype, seed):
    w = randn((1, shape[1], 1, 1), torch.float32, "cpu", seed + 2) / shape[1] ** 0.5
    b = randn((1,), torch.float32, "cpu", seed + 3)
    return [randn(shape, dtype, "cpu", seed), w, b], lambda f, w, b: (kdops.gc_context(f, w, b, backend=backend),)


def _soft_ce(backend, rows, dtype, seed, classes=37):
    s, t = _features((rows, classes), dtype, seed)
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(-1, classes, (rows,), generator=g)
    weight = torch.rand(classes, generator=g) + 0.5
    return [s], lambda s: (kdops.soft_cross_entropy(s, t, class_weight=weight, target=target, temperature=2.0,
                                                    mu=0.5, backend=backend),
                           kdops.soft_cross_entropy(s, t, backend=backend))


def _soft_bce(backend, rows, dtype, seed):
    s, t = _features((rows,), dtype, seed)
    target = torch.randint(-1, 2, (rows,), generator=torch.Generator().manual_seed(seed))
    return [s], lambda s: (kdops.soft_binary_cross_entropy(s, t, target=target, temperature=2.0, mu=0.5,
                                                           backend=backend),)


def _ld(backend, rows, dtype, seed):
    """17 bins (16 lanes per row, two rows per warp) and 40 (a warp per row, some lanes with a second bin)."""
    s17, t17 = _features((rows, 17), dtype, seed)
    s40, t40 = _features((rows, 40), dtype, seed + 2)
    weight = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) * (torch.arange(rows) % 3 != 0)
    return [s17, s40], lambda s17, s40: (
        kdops.ld_loss(s17, t17, weight=weight, normalize="weight", backend=backend),
        kdops.ld_loss(s40, t40, temperature=2.0, normalize="sum", backend=backend))


def _qfkd(backend, rows, dtype, seed):
    """91 classes (a row over several threads, not a multiple of the block) and 3 (a grid stride spans many rows);
    rows of weight 0 and beta 1 (the official value) and 2, the kernels' two exact paths."""
    s91, t91 = _features((rows, 91), dtype, seed)
    s3, t3 = _features((rows, 3), dtype, seed + 2)
    weight = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) * (torch.arange(rows) % 3 != 0)
    return [s91, s3], lambda s91, s3: (
        kdops.quality_focal_kd(s91, t91, weight=weight, normalize="weight", backend=backend),
        kdops.quality_focal_kd(s3, t3, beta=2.0, normalize="sum", backend=backend))


def _bounded(backend, rows, dtype, seed):
    s, t = _features((rows, 4), dtype, seed)
    target = randn((rows, 4), dtype, "cpu", seed + 2)
    weight = (torch.rand(rows, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
    return [s], lambda s: (kdops.bounded_regression(s, t, target=target, weight=weight, margin=0.1,
                                                    backend=backend),)


OPS = {"cwd_loss": (_cwd, FEATURES), "pkd_loss": (_pkd, FEATURES), "feature_imitation": (_imitation, FEATURES),
       "fgd_focal_loss": (_focal, FEATURES), "fgd_feature_pass": (_feature_pass, FEATURES),
       "relation_mse": (_relation, FEATURES),
       "attention_masks": (_attention, FEATURES), "gc_context": (_gc, FEATURES),
       "soft_cross_entropy": (_soft_ce, ROWS), "soft_binary_cross_entropy": (_soft_bce, ROWS), "ld_loss": (_ld, ROWS),
       "quality_focal_kd": (_qfkd, ROWS), "bounded_regression": (_bounded, ROWS)}


def _outputs_and_grads(make, backend, shape, dtype, seed):
    leaves, fn = make(backend, shape, dtype, seed)
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    outs = fn(*leaves)
    # random weights: a plain sum of a softmax has a zero gradient, all cancellation
    objective = sum((o.double() * randn(o.shape, torch.float64, "cpu", seed + 10 + k)).sum()
                    for k, o in enumerate(outs))
    grads = torch.autograd.grad(objective, leaves, allow_unused=True)
    return list(outs) + [g for g in grads if g is not None]


# The default run takes float32 on a feature-map op and a row op (the parity tests run every kernel on small
# shapes); the stress tier every op in every dtype.
STRESS_SHAPES_DEFAULT = {("feature_imitation", torch.float32), ("soft_cross_entropy", torch.float32)}


@require_backend("cpu")  # compared with the C++ CPU kernels
@pytest.mark.parametrize("op,dtype", [
    pytest.param(op, d, id=f"{op}-{d}", marks=[] if (op, d) in STRESS_SHAPES_DEFAULT else [pytest.mark.stress])
    for op in sorted(OPS) for d in ALL_DTYPES])
def test_stress_shapes_match_the_cpu_kernels(op, dtype):
    make, shapes = OPS[op]
    for i, shape in enumerate(shapes):
        expected = _outputs_and_grads(make, "cpu", shape, dtype, 100 + i)
        actual = _outputs_and_grads(make, "cuda_emu", shape, dtype, 100 + i)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape and a.dtype == e.dtype, (op, shape)
            assert_close(a, e, a.dtype, scale=10)


@require_backend("cpu")  # compared with the C++ CPU kernel
@pytest.mark.parametrize("per_image", [(1, 3), (30, 40)])  # a few boxes; more than 32 per image
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (19, 23)])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_box_masks_match_the_cpu_kernel(batch, size, per_image):
    boxes = fgd_inputs.random_boxes(batch, *size, seed=7 * batch + size[0], per_image=per_image)
    expected = kdops.box_masks(boxes, size, backend="cpu")
    actual = kdops.box_masks(boxes, size, backend="cuda_emu")
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
