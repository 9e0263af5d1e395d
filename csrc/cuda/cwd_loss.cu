// CUDA kernels of channel-wise distillation (docs/math.md §6), math in include/kdops/math/cwd_loss.h.
// One launch forward: one block per (n, c) row (grid-stride over rows), a max pass and an exp-sum
// pass over the row's pixels; thread 0 writes the row statistics and keeps the block's KL sum; the
// last block adds the block partials in order (grid_reduce.cuh). One launch backward: elementwise.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grid_reduce.cuh"
#include "kdops/math/cwd_loss.h"
#include "../ops/cwd_loss.h"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::cwd;
constexpr int kThreads = 256;

template <typename scalar_t, typename acc>
__global__ void forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               acc* __restrict__ stats, acc* __restrict__ partial, int* __restrict__ ticket,
                               acc* __restrict__ out, int64_t rows, int64_t HW, acc tau, acc inv_tau, acc scale) {
  KahanSum<acc> block_kl;  // meaningful in thread 0
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const scalar_t* x = s + row * HW;
    const scalar_t* y = t + row * HW;
    acc ms = -INFINITY, mt = -INFINITY;
    for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
      ms = fmax(ms, static_cast<acc>(x[j]));
      mt = fmax(mt, static_cast<acc>(y[j]));
    }
    ms = block_max(ms);
    mt = block_max(mt);
    const acc c0 = (static_cast<acc>(x[0]) - ms) - (static_cast<acc>(y[0]) - mt);
    KahanSum<acc> local_s, local_t, local_a, local_m1, local_m2;
    acc zmax = 0;
    for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
      const acc ds = static_cast<acc>(x[j]) - ms, dt = static_cast<acc>(y[j]) - mt;
      const acc et = exp(dt * inv_tau), z = (ds - dt) - c0;
      local_s += exp(ds * inv_tau);
      local_t += et;
      local_a += et * (dt - ds);
      local_m1 += et * z;
      local_m2 += et * z * z * expm1_gap_ratio<acc>(z * inv_tau);
      zmax = fmax(zmax, fabs(z));
    }
    const acc sum_s = block_sum(local_s.value());
    const acc sum_t = block_sum(local_t.value());
    const acc a = block_sum(local_a.value());
    const acc m1 = block_sum(local_m1.value());
    const acc m2 = block_sum(local_m2.value());
    zmax = block_max(zmax);
    if (threadIdx.x == 0) {
      acc* st = stats + row * kStats;
      st[kMaxS] = ms;
      st[kLogSumS] = log(sum_s);
      st[kMaxT] = mt;
      st[kLogSumT] = log(sum_t);
      block_kl += row_loss<acc>(tau, inv_tau, sum_s, sum_t, a, m1, m2, zmax, st + kNear, st + kShift);
    }
  }
  const acc mine[1] = {block_sum(threadIdx.x == 0 ? block_kl.value() : acc(0))};
  acc total[1];
  if (last_block_sums<acc, 1>(mine, partial, ticket, total) && threadIdx.x == 0) out[0] = total[0] * scale;
}

std::tuple<at::Tensor, at::Tensor> cwd_loss_cuda(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  check_cwd_loss_args(student, teacher, tau);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  const int64_t rows = student.size(0) * student.size(1), HW = student.size(2) * student.size(3);
  at::Tensor out = at::empty({}, opts), stats = at::empty({rows, kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(rows, 4096)));
  at::Tensor partial = at::empty({static_cast<int64_t>(blocks)}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ticket = zeroed_ticket(s, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_cwd_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    forward_kernel<scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), stats.data_ptr<acc>(), partial.data_ptr<acc>(),
        ticket.data_ptr<int>(), out.data_ptr<acc>(), rows, HW, static_cast<acc>(tau), static_cast<acc>(1.0 / tau),
        static_cast<acc>(1.0 / static_cast<double>(std::max<int64_t>(rows, 1))));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, stats};
}

template <typename scalar_t, typename acc>
__global__ void backward_kernel(const acc* __restrict__ grad_out, const scalar_t* __restrict__ s,
                                const scalar_t* __restrict__ t, const acc* __restrict__ stats,
                                scalar_t* __restrict__ g, int64_t rows, int64_t HW, acc tau, acc inv_tau, acc scale) {
  const acc coef = grad_out[0] * scale;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const acc* st = stats + row * kStats;
    const acc max_s = st[kMaxS], log_sum_s = st[kLogSumS], max_t = st[kMaxT], log_sum_t = st[kLogSumT];
    const bool near = st[kNear] != acc(0);
    const acc shift = st[kShift];
    const acc c0 = (static_cast<acc>(s[row * HW]) - max_s) - (static_cast<acc>(t[row * HW]) - max_t);
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = row * HW + j;
      const acc si = static_cast<acc>(s[i]), ti = static_cast<acc>(t[i]);
      g[i] = static_cast<scalar_t>(
          near ? coef * near_grad_element<acc>(((si - max_s) - (ti - max_t)) - c0, ti, max_t, log_sum_t, shift, inv_tau)
               : coef * tau * grad_element<acc>(si, ti, max_s, log_sum_s, max_t, log_sum_t, inv_tau));
    }
  }
}

at::Tensor cwd_loss_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student, const at::Tensor& teacher,
                                  const at::Tensor& row_stats, double tau) {
  check_cwd_loss_args(student, teacher, tau);
  const int64_t rows = student.size(0) * student.size(1), HW = student.size(2) * student.size(3);
  check_cwd_loss_backward_args(grad_out, student, row_stats);
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), st = row_stats.contiguous();
  const at::Tensor g_out = grad_out.to(acc_dtype(s.scalar_type())).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(blocks_for(HW, kThreads, 64), static_cast<unsigned int>(std::min<int64_t>(rows, 65535)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_cwd_loss_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    backward_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
        g_out.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
        st.const_data_ptr<acc>(), grad.data_ptr<scalar_t>(), rows, HW, static_cast<acc>(tau),
        static_cast<acc>(1.0 / tau), static_cast<acc>(1.0 / static_cast<double>(rows)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("cwd_loss", &cwd_loss_cuda);
  m.impl("cwd_loss_backward", &cwd_loss_backward_cuda);
}

}  // namespace kdops
