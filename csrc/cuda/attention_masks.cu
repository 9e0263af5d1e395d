// CUDA kernels of the FGD attention masks (docs/math.md §1).
// Forward: one read of feat. Each thread owns one pixel and walks the channels, so the
// per-pixel sum (m) stays in a register and loads are coalesced; the per-channel sums (k)
// are reduced across each warp and written as per-warp partials, then added in a fixed
// order (deterministic, no atomics). Row kernels (rows.cuh) add the partials and finish the softmaxes.
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers we do not use.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kdops/math/attention_masks.h"
#include "../ops/attention_masks.h"
#include "reduce.cuh"
#include "rows.cuh"

namespace kdops {
namespace {

using namespace kdops::cuda;
constexpr int kPixelsPerBlock = 256;
constexpr int kWarpsPerBlock = kPixelsPerBlock / kWarp;

template <typename scalar_t, typename acc>
__global__ void stats_kernel(const scalar_t* __restrict__ f, acc* __restrict__ m_sum, acc* __restrict__ k_part,
                             int64_t C, int64_t HW) {
  const int64_t n = blockIdx.y, tile = blockIdx.x;
  const int64_t hw = tile * kPixelsPerBlock + threadIdx.x;
  const bool active = hw < HW;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t partial_row = (n * gridDim.x + tile) * kWarpsPerBlock + warp;
  acc m = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc v = active ? fabs(static_cast<acc>(f[(n * C + c) * HW + hw])) : acc(0);
    m += v;
    const acc s = warp_sum(v);
    if (lane == 0) k_part[partial_row * C + c] = s;
  }
  if (active) m_sum[n * HW + hw] = m;
}

std::tuple<at::Tensor, at::Tensor> attention_masks_cuda(const at::Tensor& feat_in, double temperature) {
  check_attention_masks_args(feat_in, temperature);
  const c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous();
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3), HW = H * W;
  const auto opts = feat.options().dtype(acc_dtype(feat.scalar_type()));
  at::Tensor spatial = at::empty({N, H, W}, opts), channel = at::empty({N, C}, opts);
  if (N == 0) return {spatial, channel};
  TORCH_CHECK(N <= 65535, "kdops.attention_masks: at most 65535 images per call on CUDA, got N = ", N);
  const int64_t tiles = (HW + kPixelsPerBlock - 1) / kPixelsPerBlock;
  const int64_t partials = tiles * kWarpsPerBlock;
  at::Tensor k_part = at::empty({N, partials, C}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_attention_masks_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc inv_temp = acc(1) / static_cast<acc>(temperature);
    stats_kernel<scalar_t, acc><<<dim3(tiles, N), kPixelsPerBlock, 0, stream>>>(
        feat.const_data_ptr<scalar_t>(), spatial.data_ptr<acc>(), k_part.data_ptr<acc>(), C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials_kernel<acc><<<N, 256, 0, stream>>>(k_part.const_data_ptr<acc>(), channel.data_ptr<acc>(), partials, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scaled_softmax_rows_kernel<acc><<<N, 256, 0, stream>>>(channel.data_ptr<acc>(), C, inv_temp / static_cast<acc>(HW));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    scaled_softmax_rows_kernel<acc><<<N, 1024, 0, stream>>>(spatial.data_ptr<acc>(), HW,
                                                               inv_temp / static_cast<acc>(C));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {spatial, channel};
}

// out[n, i] = (1/temp) * a * (g - sum(a * g) / len) * post_scale, one row per block.
template <typename acc>
__global__ void softmax_grad_kernel(const acc* __restrict__ a, const acc* __restrict__ g, acc* __restrict__ out,
                                    int64_t len, acc inv_temp, acc post_scale) {
  const int64_t base = blockIdx.x * len;
  KahanSum<acc> local;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) local += a[base + i] * g[base + i];
  const acc weighted = block_sum(local.value()) / static_cast<acc>(len);
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
    out[base + i] = attention::scaled_softmax_grad<acc>(a[base + i], g[base + i], weighted, inv_temp) * post_scale;
}

// dF over (row = n * C + c, pixel): blockIdx.y walks rows, blockIdx.x and threads walk pixels.
template <typename scalar_t, typename acc>
__global__ void feature_grad_kernel(const scalar_t* __restrict__ f, const acc* __restrict__ gm,
                                    const acc* __restrict__ gk, scalar_t* __restrict__ out, int64_t rows, int64_t C,
                                    int64_t HW) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const acc* gmn = gm + (row / C) * HW;
    const acc gkc = gk[row];
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      out[row * HW + j] = attention::grad_feature<acc, scalar_t>(f[row * HW + j], gmn[j], gkc);
    }
  }
}

at::Tensor attention_masks_backward_cuda(const at::Tensor& grad_spatial, const at::Tensor& grad_channel,
                                         const at::Tensor& feat_in, const at::Tensor& spatial,
                                         const at::Tensor& channel, double temperature) {
  check_attention_masks_backward_args(grad_spatial, grad_channel, feat_in, spatial, channel);
  const c10::cuda::CUDAGuard guard(feat_in.device());
  const at::Tensor feat = feat_in.contiguous();
  at::Tensor grad = at::empty_like(feat, at::MemoryFormat::Contiguous);
  if (feat.numel() == 0) return grad;
  const int64_t N = feat.size(0), C = feat.size(1), HW = feat.size(2) * feat.size(3);
  const auto acc_type = acc_dtype(feat.scalar_type());
  const auto prep = [&](const at::Tensor& t) { return t.to(acc_type).contiguous(); };
  const at::Tensor g_sp = prep(grad_spatial), g_ch = prep(grad_channel), sp = prep(spatial), ch = prep(channel);
  at::Tensor gm = at::empty_like(sp), gk = at::empty_like(ch);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_attention_masks_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc inv_temp = acc(1) / static_cast<acc>(temperature);
    softmax_grad_kernel<acc><<<N, 1024, 0, stream>>>(sp.const_data_ptr<acc>(), g_sp.const_data_ptr<acc>(),
                                                     gm.data_ptr<acc>(), HW, inv_temp, acc(1) / C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    softmax_grad_kernel<acc><<<N, 256, 0, stream>>>(ch.const_data_ptr<acc>(), g_ch.const_data_ptr<acc>(),
                                                    gk.data_ptr<acc>(), C, inv_temp, acc(1) / HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid(blocks_for(HW, 256, 64), static_cast<unsigned int>(std::min<int64_t>(N * C, 65535)));
    feature_grad_kernel<scalar_t, acc><<<grid, 256, 0, stream>>>(
        feat.const_data_ptr<scalar_t>(), gm.const_data_ptr<acc>(), gk.const_data_ptr<acc>(),
        grad.data_ptr<scalar_t>(), N * C, C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("attention_masks", &attention_masks_cuda);
  m.impl("attention_masks_backward", &attention_masks_backward_cuda);
}

}  // namespace kdops
