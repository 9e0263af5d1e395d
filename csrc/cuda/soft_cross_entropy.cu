// CUDA kernels of the class-weighted soft cross-entropy (docs/math.md §7), math in
// include/kdops/math/soft_cross_entropy.h. One launch forward: each warp takes whole rows (a max pass
// and an exp-sum pass over the row's classes, which stay in L1), lane 0 writes the row statistics
// and keeps the warp's loss; blocks reduce their warps and the last block adds the block partials in
// order (grid_reduce.cuh). One launch backward: elementwise from the saved statistics.
// A label outside [0, C) that is not ignore_index makes the loss (and that row's gradient) NaN:
// raising would need a host sync.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grid_reduce.cuh"
#include "kdops/math/soft_cross_entropy.h"
#include "../ops/soft_cross_entropy.h"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::soft_ce;
constexpr int kThreads = 256, kWarps = kThreads / kWarp;

template <typename scalar_t, typename acc>
__global__ void forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               const acc* __restrict__ w, const int64_t* __restrict__ target, acc* __restrict__ stats,
                               acc* __restrict__ partial, int* __restrict__ ticket, acc* __restrict__ out,
                               acc* __restrict__ norm, int64_t rows, int64_t C, acc inv_t, acc mu,
                               int64_t ignore_index, bool separate_sum1) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  KahanSum<acc> warp_loss;  // meaningful in lane 0
  acc warp_kept = 0;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const scalar_t* zs = s + row * C;
    const scalar_t* zt = t + row * C;
    acc ms = -INFINITY, mt = -INFINITY;
    for (int64_t c = lane; c < C; c += kWarp) {
      ms = fmax(ms, static_cast<acc>(zs[c]));
      mt = fmax(mt, static_cast<acc>(zt[c]));
    }
    ms = __shfl_sync(0xffffffffu, warp_max(ms), 0);
    mt = __shfl_sync(0xffffffffu, warp_max(mt), 0);
    acc sum_s = 0, sum_t = 0, sum_1 = 0, a = 0, b = 0;
    for (int64_t c = lane; c < C; c += kWarp) {
      const acc ds = static_cast<acc>(zs[c]) - ms;
      const acc et = exp((static_cast<acc>(zt[c]) - mt) * inv_t);
      const acc wc = w == nullptr ? acc(1) : w[c];
      sum_s += exp(ds * inv_t);
      sum_t += et;
      a += wc * et;
      b += wc * et * ds;
      if (separate_sum1) sum_1 += exp(ds);
    }
    sum_s = warp_sum(sum_s);
    sum_t = warp_sum(sum_t);
    a = warp_sum(a);
    b = warp_sum(b);
    sum_1 = separate_sum1 ? warp_sum(sum_1) : sum_s;
    if (lane == 0) {
      const acc loss = finish_row(zs, target, row, C, ms, mt, inv_t, sum_s, sum_t, sum_1, a, b, mu,
                                  stats + row * kStats);
      if (row_kept(target, row, ignore_index)) {
        warp_loss += loss;
        warp_kept += acc(1);
      }
    }
  }
  const acc mine[2] = {block_sum(lane == 0 ? warp_loss.value() : acc(0)), block_sum(lane == 0 ? warp_kept : acc(0))};
  acc total[2];
  if (last_block_sums<acc, 2>(mine, partial, ticket, total) && threadIdx.x == 0) {
    out[0] = total[1] == acc(0) ? acc(0) : total[0] / total[1];
    norm[0] = total[1];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_cross_entropy_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const c10::optional<at::Tensor>& class_weight,
    const c10::optional<at::Tensor>& target, double temperature, double mu, int64_t ignore_index) {
  check_soft_cross_entropy_args(student, teacher, class_weight, target, temperature);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  const int64_t rows = student.size(0), C = student.size(1);
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts), stats = at::empty({rows, kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor w = class_weight.has_value() ? class_weight->contiguous() : at::Tensor();
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  const unsigned int blocks = blocks_for(rows, kWarps, 1024);
  at::Tensor partial = at::empty({static_cast<int64_t>(blocks) * 2}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ticket = zeroed_ticket(s, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_soft_cross_entropy_cuda", [&] {
    using acc = acc_t<scalar_t>;
    forward_kernel<scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
        class_weight.has_value() ? w.const_data_ptr<acc>() : nullptr,
        target.has_value() ? y.const_data_ptr<int64_t>() : nullptr, stats.data_ptr<acc>(), partial.data_ptr<acc>(),
        ticket.data_ptr<int>(), out.data_ptr<acc>(), norm.data_ptr<acc>(), rows, C,
        static_cast<acc>(1.0 / temperature), static_cast<acc>(mu), ignore_index,
        target.has_value() && temperature != 1.0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, norm, stats};
}

template <typename scalar_t, typename acc>
__global__ void backward_kernel(const acc* __restrict__ grad_out, const acc* __restrict__ norm,
                                const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                const acc* __restrict__ w, const int64_t* __restrict__ target,
                                const acc* __restrict__ stats, scalar_t* __restrict__ g, int64_t rows, int64_t C,
                                acc inv_t, acc mu, int64_t ignore_index) {
  const acc n = norm[0];
  const acc coef = n == acc(0) ? acc(0) : grad_out[0] / n;
  const bool has_target = target != nullptr;
  const int64_t total = rows * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / C, c = i - row * C;
    acc v = 0;
    if (row_kept(target, row, ignore_index)) {
      const int64_t label = has_target ? target[row] : -1;
      if (has_target && !label_ok(label, C)) {
        v = static_cast<acc>(NAN);
      } else {
        const acc* st = stats + row * kStats;
        v = coef * grad_element<acc>(static_cast<acc>(s[i]), static_cast<acc>(t[i]), w == nullptr ? acc(1) : w[c],
                                     st[kMaxS], st[kLogSumS], st[kMaxT], st[kLogSumT], st[kLogSum1], st[kWeight],
                                     inv_t, has_target, c == label, mu);
      }
    }
    g[i] = static_cast<scalar_t>(v);
  }
}

at::Tensor soft_cross_entropy_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student,
                                            const at::Tensor& teacher, const c10::optional<at::Tensor>& class_weight,
                                            const c10::optional<at::Tensor>& target, const at::Tensor& norm,
                                            const at::Tensor& row_stats, double temperature, double mu,
                                            int64_t ignore_index) {
  check_soft_cross_entropy_args(student, teacher, class_weight, target, temperature);
  check_soft_cross_entropy_backward_args(grad_out, student, norm, row_stats);
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), st = row_stats.contiguous();
  const at::Tensor w = class_weight.has_value() ? class_weight->contiguous() : at::Tensor();
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  const auto acc_type = acc_dtype(s.scalar_type());
  // Both are 0-dim tensors of the accumulation dtype already; .to() is then a no-op (no kernel).
  const at::Tensor g_out = grad_out.to(acc_type).reshape({1}), n = norm.to(acc_type).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_soft_cross_entropy_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    backward_kernel<scalar_t, acc><<<blocks_for(s.numel(), kThreads, 8192), kThreads, 0, stream>>>(
        g_out.const_data_ptr<acc>(), n.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(),
        t.const_data_ptr<scalar_t>(), class_weight.has_value() ? w.const_data_ptr<acc>() : nullptr,
        target.has_value() ? y.const_data_ptr<int64_t>() : nullptr, st.const_data_ptr<acc>(),
        grad.data_ptr<scalar_t>(), s.size(0), s.size(1), static_cast<acc>(1.0 / temperature), static_cast<acc>(mu),
        ignore_index);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("soft_cross_entropy", &soft_cross_entropy_cuda);
  m.impl("soft_cross_entropy_backward", &soft_cross_entropy_backward_cuda);
}

}  // namespace kdops
