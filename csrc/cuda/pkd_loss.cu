// CUDA kernels of PKD (docs/math.md §6), math in include/kdops/math/pkd_loss.h. One launch forward: one
// block per channel (grid-stride over channels) reads the channel's N segments of H*W values three
// times (means, centred squares, squared difference), thread 0 writes the channel statistics, and
// the last block adds the D_c in order (grid_reduce.cuh). One launch backward: elementwise.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grid_reduce.cuh"
#include "kdops/math/pkd_loss.h"
#include "../ops/pkd_loss.h"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::pkd;
constexpr int kThreads = 512;

template <typename scalar_t, typename acc>
__global__ void forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               acc* __restrict__ stats, acc* __restrict__ partial, int* __restrict__ ticket,
                               acc* __restrict__ out, int64_t N, int64_t C, int64_t HW) {
  const int64_t M = N * HW;
  KahanSum<acc> block_d;  // meaningful in thread 0
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    // The channel's values are N contiguous segments of HW, at (n * C + c) * HW.
    // Scaled sums (no overflow, math header) and the largest magnitudes, which scale the centred squares.
    const acc m_scale = mean_scale<acc>(M);
    KahanSum<acc> sx, sy;
    acc ax_local = 0, ay_local = 0;
    for (int64_t n = 0; n < N; ++n)
    for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
      const int64_t i = (n * C + c) * HW + j;
      const acc xi = static_cast<acc>(s[i]), yi = static_cast<acc>(t[i]);
      sx += xi * m_scale;
      sy += yi * m_scale;
      ax_local = fmax(ax_local, fabs(xi));
      ay_local = fmax(ay_local, fabs(yi));
    }
    const acc m_scaled = static_cast<acc>(M) * m_scale;
    const acc mx = block_sum(sx.value()) / m_scaled, my = block_sum(sy.value()) / m_scaled;
    const acc scale_x = unit_scale<acc>(block_max(ax_local)), scale_y = unit_scale<acc>(block_max(ay_local));
    const acc mx_scaled = mx * scale_x, my_scaled = my * scale_y;
    KahanSum<acc> vx, vy;
    for (int64_t n = 0; n < N; ++n)
    for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
      const int64_t i = (n * C + c) * HW + j;
      const acc dx = static_cast<acc>(s[i]) * scale_x - mx_scaled, dy = static_cast<acc>(t[i]) * scale_y - my_scaled;
      vx += dx * dx;
      vy += dy * dy;
    }
    const acc std_x = unbiased_std<acc>(block_sum(vx.value()), M, scale_x),
              std_y = unbiased_std<acc>(block_sum(vy.value()), M, scale_y);
    const acc inv_ax = acc(1) / (std_x + acc(kEps)), inv_ay = acc(1) / (std_y + acc(kEps));
    KahanSum<acc> local_d;
    for (int64_t n = 0; n < N; ++n)
    for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
      const int64_t i = (n * C + c) * HW + j;
      const acc diff = (static_cast<acc>(s[i]) - mx) * inv_ax - (static_cast<acc>(t[i]) - my) * inv_ay;
      local_d += diff * diff;
    }
    const acc d = block_sum(local_d.value());
    if (threadIdx.x == 0) {
      acc* st = stats + c * kStats;
      st[kMeanS] = mx;
      st[kStdS] = std_x;
      st[kMeanT] = my;
      st[kStdT] = std_y;
      st[kSquaredDiff] = d;
      block_d += d;
    }
  }
  const acc mine[1] = {block_sum(threadIdx.x == 0 ? block_d.value() : acc(0))};
  acc total[1];
  if (last_block_sums<acc, 1>(mine, partial, ticket, total) && threadIdx.x == 0)
    out[0] = total[0] / (acc(2) * static_cast<acc>(C) * static_cast<acc>(M));
}

std::tuple<at::Tensor, at::Tensor> pkd_loss_cuda(const at::Tensor& student, const at::Tensor& teacher) {
  check_pkd_loss_args(student, teacher);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  const int64_t N = student.size(0), C = student.size(1), HW = student.size(2) * student.size(3);
  at::Tensor out = at::empty({}, opts), stats = at::empty({C, kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const unsigned int blocks = static_cast<unsigned int>(std::min<int64_t>(C, 4096));
  at::Tensor partial = at::empty({static_cast<int64_t>(blocks)}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ticket = zeroed_ticket(s, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_pkd_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    forward_kernel<scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), stats.data_ptr<acc>(), partial.data_ptr<acc>(),
        ticket.data_ptr<int>(), out.data_ptr<acc>(), N, C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, stats};
}

template <typename scalar_t, typename acc>
__global__ void backward_kernel(const acc* __restrict__ grad_out, const scalar_t* __restrict__ s,
                                const scalar_t* __restrict__ t, const acc* __restrict__ stats,
                                scalar_t* __restrict__ g, int64_t rows, int64_t C, int64_t HW, int64_t M) {
  const acc coef = grad_out[0] / (static_cast<acc>(C) * static_cast<acc>(M));
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const Backward<acc> b = backward_coeffs<acc>(stats + (row % C) * kStats, M);
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = row * HW + j;
      g[i] = static_cast<scalar_t>(coef * grad_element<acc>(static_cast<acc>(s[i]), static_cast<acc>(t[i]), b));
    }
  }
}

at::Tensor pkd_loss_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student, const at::Tensor& teacher,
                                  const at::Tensor& channel_stats) {
  check_pkd_loss_args(student, teacher);
  check_pkd_loss_backward_args(grad_out, student, channel_stats);
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), st = channel_stats.contiguous();
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const at::Tensor g_out = grad_out.to(acc_dtype(s.scalar_type())).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int kGradThreads = 256;
  const dim3 grid(blocks_for(HW, kGradThreads, 64), static_cast<unsigned int>(std::min<int64_t>(N * C, 65535)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_pkd_loss_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    backward_kernel<scalar_t, acc><<<grid, kGradThreads, 0, stream>>>(
        g_out.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
        st.const_data_ptr<acc>(), grad.data_ptr<scalar_t>(), N * C, C, HW, N * HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("pkd_loss", &pkd_loss_cuda);
  m.impl("pkd_loss_backward", &pkd_loss_backward_cuda);
}

}  // namespace kdops
