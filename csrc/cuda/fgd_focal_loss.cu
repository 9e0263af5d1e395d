// CUDA kernels of the FGD focal loss (docs/math.md §3); same algorithm as csrc/cpu/fgd_focal_loss.cpp.
// Forward: (1) one read of S and T: each thread owns one pixel and walks the channels (per-pixel
// sums in registers, coalesced loads), per-channel sums are reduced per warp into partials;
// (2) row kernels finish the four softmaxes and, per image, the attention loss and its gradient
// coefficients; (3) a second read of S and T sums the teacher-weighted squared differences under
// M_fg and M_bg into per-block partials; (4) one block adds every partial in a fixed order.
// Backward: one elementwise pass writing dS, the incoming gradients read on the device.
// Deterministic, no atomics, no host sync.
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers we do not use.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kdops/math/fgd_focal_loss.h"
#include "../ops/fgd_focal_loss.h"
#include "fgd_attention.cuh"
#include "rows.cuh"
#include "reduce.cuh"

namespace kdops {
namespace {

using namespace kdops::cuda;
constexpr int kPixelsPerBlock = 256;
constexpr int kWarpsPerBlock = kPixelsPerBlock / kWarp;
constexpr int kThreads = 256;

template <typename scalar_t, typename acc>
__global__ void stats_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, acc* __restrict__ ms,
                             acc* __restrict__ mt, acc* __restrict__ ks_part, acc* __restrict__ kt_part, int64_t C,
                             int64_t HW) {
  const int64_t n = blockIdx.y, tile = blockIdx.x;
  const int64_t hw = tile * kPixelsPerBlock + threadIdx.x;
  const bool active = hw < HW;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t partial_row = (n * gridDim.x + tile) * kWarpsPerBlock + warp;
  acc m_s = 0, m_t = 0;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t i = (n * C + c) * HW + hw;
    const acc a = active ? fabs(static_cast<acc>(s[i])) : acc(0);
    const acc b = active ? fabs(static_cast<acc>(t[i])) : acc(0);
    m_s += a;
    m_t += b;
    const acc sa = warp_sum(a), sb = warp_sum(b);
    if (lane == 0) {
      ks_part[partial_row * C + c] = sa;
      kt_part[partial_row * C + c] = sb;
    }
  }
  if (active) {
    ms[n * HW + hw] = m_s;
    mt[n * HW + hw] = m_t;
  }
}

// Rows (n * C + c) along blockIdx.y, pixels along blockIdx.x and the threads; one partial per block.
template <typename scalar_t, typename acc>
__global__ void feature_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               const acc* __restrict__ fg, const acc* __restrict__ bg, const acc* __restrict__ t_sp,
                               const acc* __restrict__ t_ch, acc* __restrict__ fg_part, acc* __restrict__ bg_part,
                               int64_t rows, int64_t C, int64_t HW) {
  KahanSum<acc> local_f, local_b;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t pixels = (row / C) * HW;
    const acc cw = t_ch[row];
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const acc d = static_cast<acc>(s[row * HW + j]) - static_cast<acc>(t[row * HW + j]);
      const acc a = cw * t_sp[pixels + j] * d * d;
      local_f += weighted<acc>(fg[pixels + j], a);  // a pixel where a mask is 0 adds exactly 0
      local_b += weighted<acc>(bg[pixels + j], a);
    }
  }
  const acc sf = block_sum(local_f.value());
  const acc sb = block_sum(local_b.value());
  if (threadIdx.x == 0) {
    fg_part[blockIdx.y * gridDim.x + blockIdx.x] = sf;
    bg_part[blockIdx.y * gridDim.x + blockIdx.x] = sb;
  }
}

template <typename acc>
__global__ void finalize_kernel(const acc* __restrict__ fg_part, const acc* __restrict__ bg_part, int64_t partials,
                                const acc* __restrict__ att_part, int64_t N, acc alpha, acc beta, acc gamma,
                                acc* __restrict__ loss, acc* __restrict__ terms) {
  KahanSum<acc> local_f, local_b, local_a;
  for (int64_t i = threadIdx.x; i < partials; i += blockDim.x) {
    local_f += fg_part[i];
    local_b += bg_part[i];
  }
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) local_a += att_part[i];
  const acc f = block_sum(local_f.value());
  const acc b = block_sum(local_b.value());
  const acc a = block_sum(local_a.value());
  if (threadIdx.x == 0) {
    store_focal_loss<acc>(f, b, a, N, alpha, beta, gamma, terms, loss);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fgd_focal_loss_cuda(
    const at::Tensor& student_in, const at::Tensor& teacher_in, const at::Tensor& fg_in, const at::Tensor& bg_in,
    double temperature, double alpha, double beta, double gamma) {
  check_fgd_focal_loss_args(student_in, teacher_in, fg_in, bg_in, temperature);
  const c10::cuda::CUDAGuard guard(student_in.device());
  const at::Tensor s = student_in.contiguous(), t = teacher_in.contiguous();
  const at::Tensor fg = fg_in.contiguous(), bg = bg_in.contiguous();
  const int64_t N = s.size(0), C = s.size(1), H = s.size(2), W = s.size(3), HW = H * W;
  const auto opts = s.options().dtype(acc_dtype(s.scalar_type()));
  at::Tensor loss = at::zeros({}, opts), terms = at::zeros({3}, opts);
  at::Tensor t_spatial = at::empty({N, H, W}, opts), t_channel = at::empty({N, C}, opts);
  at::Tensor pixel_att = at::empty({N, H, W}, opts), channel_att = at::empty({N, C}, opts);
  if (N == 0) return {loss, terms, t_spatial, t_channel, pixel_att, channel_att};
  TORCH_CHECK(N <= 65535, "kdops.fgd_focal_loss: at most 65535 images per call on CUDA, got N = ", N);
  const int64_t tiles = (HW + kPixelsPerBlock - 1) / kPixelsPerBlock, partials = tiles * kWarpsPerBlock;
  at::Tensor s_spatial = at::empty({N, HW}, opts), s_channel = at::empty({N, C}, opts);
  at::Tensor ks_part = at::empty({N, partials, C}, opts), kt_part = at::empty({N, partials, C}, opts);
  at::Tensor att_part = at::empty({N}, opts);
  const dim3 rows_grid(blocks_for(HW, kThreads, 32), static_cast<unsigned int>(std::min<int64_t>(N * C, 2048)));
  at::Tensor fg_part = at::empty({static_cast<int64_t>(rows_grid.x) * rows_grid.y}, opts);
  at::Tensor bg_part = at::empty_like(fg_part);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_fgd_focal_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc inv_temp = acc(1) / static_cast<acc>(temperature);
    stats_kernel<scalar_t, acc><<<dim3(tiles, N), kPixelsPerBlock, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), s_spatial.data_ptr<acc>(),
        t_spatial.data_ptr<acc>(), ks_part.data_ptr<acc>(), kt_part.data_ptr<acc>(), C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials_kernel<acc><<<N, 256, 0, stream>>>(ks_part.const_data_ptr<acc>(), s_channel.data_ptr<acc>(),
                                                    partials, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials_kernel<acc><<<N, 256, 0, stream>>>(kt_part.const_data_ptr<acc>(), t_channel.data_ptr<acc>(),
                                                    partials, C);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_attention<acc>(s_spatial.data_ptr<acc>(), t_spatial.data_ptr<acc>(), s_channel.data_ptr<acc>(),
                          t_channel.data_ptr<acc>(), pixel_att.data_ptr<acc>(), channel_att.data_ptr<acc>(),
                          att_part.data_ptr<acc>(), N, C, HW, inv_temp, stream);
    feature_kernel<scalar_t, acc><<<rows_grid, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), fg.const_data_ptr<acc>(), bg.const_data_ptr<acc>(),
        t_spatial.const_data_ptr<acc>(), t_channel.const_data_ptr<acc>(), fg_part.data_ptr<acc>(),
        bg_part.data_ptr<acc>(), N * C, C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<acc><<<1, 1024, 0, stream>>>(fg_part.const_data_ptr<acc>(), bg_part.const_data_ptr<acc>(),
                                                 fg_part.numel(), att_part.const_data_ptr<acc>(), N,
                                                 static_cast<acc>(alpha), static_cast<acc>(beta),
                                                 static_cast<acc>(gamma), loss.data_ptr<acc>(), terms.data_ptr<acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, terms, t_spatial, t_channel, pixel_att, channel_att};
}

template <typename scalar_t, typename acc>
__global__ void grad_kernel(const acc* __restrict__ grad_loss, const acc* __restrict__ grad_terms,
                            const scalar_t* __restrict__ s, const scalar_t* __restrict__ t, const acc* __restrict__ fg,
                            const acc* __restrict__ bg, const acc* __restrict__ t_sp, const acc* __restrict__ t_ch,
                            const acc* __restrict__ pixel_att, const acc* __restrict__ channel_att,
                            scalar_t* __restrict__ out, int64_t rows, int64_t C, int64_t HW, acc two_over_n, acc alpha,
                            acc beta, acc gamma) {
  const acc gl = grad_loss[0];
  const acc c_fg = alpha * gl + grad_terms[0], c_bg = beta * gl + grad_terms[1], c_att = gamma * gl + grad_terms[2];
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t pixels = (row / C) * HW;
    const acc cw = t_ch[row], ca = weighted<acc>(c_att, channel_att[row]);
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t p = pixels + j, i = row * HW + j;
      const acc mc = focal::mask_coef<acc>(two_over_n, c_fg, fg[p], c_bg, bg[p]);
      out[i] = focal::grad_student<acc, scalar_t>(s[i], t[i], mc, t_sp[p], cw, weighted<acc>(c_att, pixel_att[p]), ca);
    }
  }
}

at::Tensor fgd_focal_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad_terms,
                                        const at::Tensor& student_in, const at::Tensor& teacher_in,
                                        const at::Tensor& fg, const at::Tensor& bg, const at::Tensor& t_spatial,
                                        const at::Tensor& t_channel, const at::Tensor& pixel_att,
                                        const at::Tensor& channel_att, double alpha, double beta, double gamma) {
  check_fgd_focal_loss_backward_args(grad_loss, grad_terms, student_in, teacher_in, fg, bg, t_spatial, t_channel,
                                     pixel_att, channel_att);
  const c10::cuda::CUDAGuard guard(student_in.device());
  const at::Tensor s = student_in.contiguous(), t = teacher_in.contiguous();
  at::Tensor grad = at::empty_like(s, at::MemoryFormat::Contiguous);
  if (s.numel() == 0) return grad;
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const auto acc_type = acc_dtype(s.scalar_type());
  const auto prep = [&](const at::Tensor& x) { return x.to(acc_type).contiguous(); };
  const at::Tensor gl = prep(grad_loss).reshape({1}), gt = prep(grad_terms);
  const at::Tensor fg_c = prep(fg), bg_c = prep(bg), t_sp = prep(t_spatial), t_ch = prep(t_channel);
  const at::Tensor pa = prep(pixel_att), ca = prep(channel_att);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_fgd_focal_loss_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const dim3 grid(blocks_for(HW, kThreads, 64), static_cast<unsigned int>(std::min<int64_t>(N * C, 65535)));
    grad_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
        gl.const_data_ptr<acc>(), gt.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
        fg_c.const_data_ptr<acc>(), bg_c.const_data_ptr<acc>(), t_sp.const_data_ptr<acc>(), t_ch.const_data_ptr<acc>(),
        pa.const_data_ptr<acc>(), ca.const_data_ptr<acc>(), grad.data_ptr<scalar_t>(), N * C, C, HW,
        acc(2) / static_cast<acc>(N), static_cast<acc>(alpha), static_cast<acc>(beta), static_cast<acc>(gamma));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("fgd_focal_loss", &fgd_focal_loss_cuda);
  m.impl("fgd_focal_loss_backward", &fgd_focal_loss_backward_cuda);
}

}  // namespace kdops
