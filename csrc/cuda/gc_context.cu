// CUDA kernels of the GcBlock context pooling (docs/math.md §4); same algorithm as csrc/cpu/gc_context.cpp.
// Forward, one read of F with an online softmax: each block owns one image and 256 pixels (one per
// thread), computes the logits, the block max and exp-sum, and per-warp partial contexts
// sum_j exp(l_j - block max) F[c, j]; one block per image merges the partials in order, rescaled
// to the image max; the probabilities are written last. Backward, one read of F: ubar = g . context,
// u_j = g . F[:, j], dl_j = p_j (u_j - ubar), per-warp partial weight gradients and (if asked) dF;
// the partials are added in a fixed order. Deterministic, no atomics, no host sync.
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers we do not use.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kdops/math/gc_context.h"
#include "../ops/gc_context.h"
#include "reduce.cuh"

namespace kdops {
namespace {

using namespace kdops::cuda;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;

template <typename scalar_t, typename acc>
__global__ void partial_kernel(const scalar_t* __restrict__ f, const acc* __restrict__ w, const acc* __restrict__ b,
                               acc* __restrict__ logits, acc* __restrict__ ctx_part, acc* __restrict__ tile_max,
                               acc* __restrict__ tile_sum, int64_t C, int64_t HW) {
  const int64_t n = blockIdx.y, tile = blockIdx.x, tiles = gridDim.x;
  const int64_t j = tile * kThreads + threadIdx.x;
  const bool active = j < HW;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  acc l = b[0];
  if (active)
    for (int64_t c = 0; c < C; ++c) l += w[c] * static_cast<acc>(f[(n * C + c) * HW + j]);
  const acc mx = block_max(active ? l : acc(-INFINITY));
  const acc e = active ? exp(l - mx) : acc(0);
  const acc total = block_sum(e);
  if (active) logits[n * HW + j] = l;
  if (threadIdx.x == 0) {
    tile_max[n * tiles + tile] = mx;
    tile_sum[n * tiles + tile] = total;
  }
  const int64_t partial_row = (n * tiles + tile) * kWarps + warp;
  for (int64_t c = 0; c < C; ++c) {
    const acc v = warp_sum(active ? e * static_cast<acc>(f[(n * C + c) * HW + j]) : acc(0));
    if (lane == 0) ctx_part[partial_row * C + c] = v;
  }
}

// One block per image: context = sum of the partials rescaled to the image max, over the exp-sum.
template <typename acc>
__global__ void merge_kernel(const acc* __restrict__ ctx_part, const acc* __restrict__ tile_max,
                             const acc* __restrict__ tile_sum, acc* __restrict__ ctx, acc* __restrict__ stats, int64_t C,
                             int64_t tiles) {
  const int64_t n = blockIdx.x;
  acc local_max = -INFINITY;
  for (int64_t k = threadIdx.x; k < tiles; k += blockDim.x) local_max = fmax(local_max, tile_max[n * tiles + k]);
  const acc mx = block_max(local_max);
  KahanSum<acc> local_sum;
  for (int64_t k = threadIdx.x; k < tiles; k += blockDim.x)
    local_sum += tile_sum[n * tiles + k] * exp(tile_max[n * tiles + k] - mx);
  const acc z = block_sum(local_sum.value());
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    KahanSum<acc> total;
    for (int64_t k = 0; k < tiles; ++k) {
      const acc scale = exp(tile_max[n * tiles + k] - mx);
      for (int r = 0; r < kWarps; ++r) total += ctx_part[((n * tiles + k) * kWarps + r) * C + c] * scale;
    }
    ctx[n * C + c] = total.value() / z;
  }
  if (threadIdx.x == 0) {
    stats[2 * n] = mx;
    stats[2 * n + 1] = z;
  }
}

template <typename acc>
__global__ void probs_kernel(acc* __restrict__ logits, const acc* __restrict__ stats, int64_t HW) {
  const int64_t n = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < HW) logits[n * HW + j] = exp(logits[n * HW + j] - stats[2 * n]) / stats[2 * n + 1];
}

std::tuple<at::Tensor, at::Tensor> gc_context_cuda(const at::Tensor& feat_in, const at::Tensor& weight_in,
                                                   const at::Tensor& bias_in) {
  check_gc_context_args(feat_in, weight_in, bias_in);
  const c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), HW = H * W;
  const auto opts = feat.options().dtype(acc_dtype(feat.scalar_type()));
  at::Tensor context = at::empty({N, C}, opts), probs = at::empty({N, H, W}, opts);
  if (N == 0) return {context, probs};
  TORCH_CHECK(N <= 65535, "kdops.gc_context: at most 65535 images per call on CUDA, got N = ", N);
  const int64_t tiles = (HW + kThreads - 1) / kThreads;
  at::Tensor ctx_part = at::empty({N, tiles * kWarps, C}, opts);
  at::Tensor tile_max = at::empty({N, tiles}, opts), tile_sum = at::empty({N, tiles}, opts);
  at::Tensor stats = at::empty({N, 2}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_gc_context_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(N));
    partial_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
        feat.const_data_ptr<scalar_t>(), weight.const_data_ptr<acc>(), bias.const_data_ptr<acc>(),
        probs.data_ptr<acc>(), ctx_part.data_ptr<acc>(), tile_max.data_ptr<acc>(), tile_sum.data_ptr<acc>(), C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    merge_kernel<acc><<<N, 256, 0, stream>>>(ctx_part.const_data_ptr<acc>(), tile_max.const_data_ptr<acc>(),
                                             tile_sum.const_data_ptr<acc>(), context.data_ptr<acc>(),
                                             stats.data_ptr<acc>(), C, tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    probs_kernel<acc><<<grid, kThreads, 0, stream>>>(probs.data_ptr<acc>(), stats.const_data_ptr<acc>(), HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {context, probs};
}

template <typename scalar_t, typename acc>
__global__ void grad_kernel(const acc* __restrict__ g, const scalar_t* __restrict__ f, const acc* __restrict__ w,
                            const acc* __restrict__ ctx, const acc* __restrict__ probs, scalar_t* __restrict__ df,
                            acc* __restrict__ dw_part, int64_t C, int64_t HW) {
  const int64_t n = blockIdx.y, tile = blockIdx.x, tiles = gridDim.x;
  const int64_t j = tile * kThreads + threadIdx.x;
  const bool active = j < HW;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const acc* gn = g + n * C;
  acc local = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) local += gn[c] * ctx[n * C + c];
  const acc ubar = block_sum(local);
  acc u = 0;
  if (active)
    for (int64_t c = 0; c < C; ++c) u += gn[c] * static_cast<acc>(f[(n * C + c) * HW + j]);
  const acc p = active ? probs[n * HW + j] : acc(0);
  const acc dl = gc::logit_grad<acc>(p, u, ubar);
  const int64_t partial_row = (n * tiles + tile) * kWarps + warp;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t i = (n * C + c) * HW + j;
    const acc fv = active ? static_cast<acc>(f[i]) : acc(0);
    const acc v = warp_sum(dl * fv);
    if (lane == 0) dw_part[partial_row * C + c] = v;
    if (df != nullptr && active) df[i] = gc::grad_feat<acc, scalar_t>(p, gn[c], w[c], dl);
  }
}

// out[c] = sum over rows r (in order) of part[r, c].
template <typename acc>
__global__ void sum_rows_kernel(const acc* __restrict__ part, acc* __restrict__ out, int64_t rows, int64_t C) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  KahanSum<acc> total;
  for (int64_t r = 0; r < rows; ++r) total += part[r * C + c];
  out[c] = total.value();
}

std::tuple<at::Tensor, at::Tensor> gc_context_backward_cuda(const at::Tensor& grad_context,
                                                            const at::Tensor& feat_in, const at::Tensor& weight,
                                                            const at::Tensor& context, const at::Tensor& probs,
                                                            bool need_feat) {
  check_gc_context_backward_args(grad_context, feat_in, weight, context, probs);
  const c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous();
  at::Tensor grad_feat = need_feat ? at::empty_like(feat, at::MemoryFormat::Contiguous) : feat.new_empty({0});
  at::Tensor grad_weight = at::zeros_like(weight);
  if (feat.numel() == 0) return {grad_feat, grad_weight};
  const int64_t N = feat.size(0), C = feat.size(1), HW = feat.size(2) * feat.size(3);
  TORCH_CHECK(N <= 65535, "kdops.gc_context_backward: at most 65535 images per call on CUDA, got N = ", N);
  const int64_t tiles = (HW + kThreads - 1) / kThreads;
  at::Tensor dw_part = at::empty({N * tiles * kWarps, C}, grad_weight.options());
  const at::Tensor g = grad_context.contiguous(), w = weight.contiguous(), ctx = context.contiguous();
  const at::Tensor p = probs.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_gc_context_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(N));
    grad_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
        g.const_data_ptr<acc>(), feat.const_data_ptr<scalar_t>(), w.const_data_ptr<acc>(), ctx.const_data_ptr<acc>(),
        p.const_data_ptr<acc>(), need_feat ? grad_feat.data_ptr<scalar_t>() : nullptr, dw_part.data_ptr<acc>(), C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_rows_kernel<acc><<<blocks_for(C, 256), 256, 0, stream>>>(dw_part.const_data_ptr<acc>(),
                                                                 grad_weight.data_ptr<acc>(), N * tiles * kWarps, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_feat, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("gc_context", &gc_context_cuda);
  m.impl("gc_context_backward", &gc_context_backward_cuda);
}

}  // namespace kdops
