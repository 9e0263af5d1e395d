// CUDA kernels of localization distillation (docs/math.md §11), row math in include/kdops/math/cwd_loss.h (a row's
// T^2 KL is CWD's) and include/kdops/math/ld_loss.h. Rows are short (16 or 17 bins): a group of `lanes` threads
// (the largest power of two <= n, at most a warp) takes one row, so a warp takes 32 / lanes rows at a time. One
// launch forward: per row a max pass and an exp-sum pass, reduced by shuffles within the group; the group's
// first lane writes the row statistics and keeps its rows' weighted sum and weights; blocks reduce their
// threads and the last block adds the block partials in order (grid_reduce.cuh). A row of weight 0 is not read.
// One launch backward: elementwise from the saved statistics.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grid_reduce.cuh"
#include "kdops/math/ld_loss.h"
#include "../ops/ld_loss.h"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::cwd;  // the row statistics and the row math are CWD's
constexpr int kThreads = 256;

// Threads per row: the largest power of two <= n, at most a warp.
int lanes_for(int64_t n) {
  int lanes = 1;
  while (lanes < kWarp && 2 * lanes <= n) lanes *= 2;
  return lanes;
}

// Sum and max over the `lanes` threads of a row's group (every lane of the warp calls them).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset, lanes);
  return v;
}

template <typename T>
__device__ __forceinline__ T group_max(T v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset, lanes));
  return v;
}

template <typename scalar_t, typename acc>
__global__ void forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               const acc* __restrict__ w, acc* __restrict__ stats, acc* __restrict__ partial,
                               int* __restrict__ ticket, acc* __restrict__ out, acc* __restrict__ norm, int64_t rows,
                               int64_t n, int lanes, acc tau, acc inv_tau, acc inv_n, int normalize) {
  const int lane = threadIdx.x % lanes;
  const int64_t per_block = kThreads / lanes;  // rows a block takes at a time
  KahanSum<acc> my_loss, my_weight;             // meaningful in each group's first lane
  // The trip count depends on the block only: every lane of a warp reaches every shuffle.
  for (int64_t first = blockIdx.x * per_block; first < rows; first += static_cast<int64_t>(gridDim.x) * per_block) {
    const int64_t row = first + threadIdx.x / lanes;
    const acc wr = row < rows ? ld::row_weight(w, row) : acc(0);
    const bool live = wr != acc(0);  // rows past the end and rows of weight 0 read nothing
    const scalar_t* x = s + row * n;
    const scalar_t* y = t + row * n;
    acc ms = -INFINITY, mt = -INFINITY;
    if (live) {
      for (int64_t j = lane; j < n; j += lanes) {
        ms = fmax(ms, static_cast<acc>(x[j]));
        mt = fmax(mt, static_cast<acc>(y[j]));
      }
    }
    ms = group_max(ms, lanes);
    mt = group_max(mt, lanes);
    acc sum_s = 0, sum_t = 0, a = 0, m1 = 0, m2 = 0, zmax = 0;
    if (live) {
      const acc c0 = (static_cast<acc>(x[0]) - ms) - (static_cast<acc>(y[0]) - mt);
      for (int64_t j = lane; j < n; j += lanes) {
        const acc ds = static_cast<acc>(x[j]) - ms, dt = static_cast<acc>(y[j]) - mt;
        const acc et = exp(dt * inv_tau), z = (ds - dt) - c0;
        sum_s += exp(ds * inv_tau);
        sum_t += et;
        a += et * (dt - ds);
        m1 += et * z;
        m2 += et * z * z * expm1_gap_ratio<acc>(z * inv_tau);
        zmax = fmax(zmax, fabs(z));
      }
    }
    sum_s = group_sum(sum_s, lanes);
    sum_t = group_sum(sum_t, lanes);
    a = group_sum(a, lanes);
    m1 = group_sum(m1, lanes);
    m2 = group_sum(m2, lanes);
    zmax = group_max(zmax, lanes);
    if (lane == 0 && row < rows) {
      acc* st = stats + row * kStats;
      if (live) {
        st[kMaxS] = ms;
        st[kLogSumS] = log(sum_s);
        st[kMaxT] = mt;
        st[kLogSumT] = log(sum_t);
        my_loss += wr * (row_loss<acc>(tau, inv_tau, sum_s, sum_t, a, m1, m2, zmax, st + kNear, st + kShift) * inv_n);
      } else {
        for (int k = 0; k < kStats; ++k) st[k] = acc(0);
      }
      my_weight += wr;
    }
  }
  const bool first_lane = lane == 0;
  const acc mine[2] = {block_sum(first_lane ? my_loss.value() : acc(0)),
                       block_sum(first_lane ? my_weight.value() : acc(0))};
  acc total[2];
  if (last_block_sums<acc, 2>(mine, partial, ticket, total) && threadIdx.x == 0) {
    const acc z = ld::normaliser<acc>(normalize, static_cast<acc>(rows), total[1]);
    out[0] = ld::normalised<acc>(total[0], z);
    norm[0] = z;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ld_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                            const c10::optional<at::Tensor>& weight,
                                                            double temperature, c10::string_view normalize) {
  check_ld_loss_args(student, teacher, weight, temperature);
  const int code = ld_normalize_code(normalize);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  const int64_t rows = student.size(0), n = student.size(1);
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts), stats = at::empty({rows, kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const int lanes = lanes_for(n);
  const unsigned int blocks = blocks_for(rows, kThreads / lanes, 1024);
  at::Tensor partial = at::empty({static_cast<int64_t>(blocks) * 2}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ticket = zeroed_ticket(s, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_ld_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    forward_kernel<scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
        weight.has_value() ? w.const_data_ptr<acc>() : nullptr, stats.data_ptr<acc>(), partial.data_ptr<acc>(),
        ticket.data_ptr<int>(), out.data_ptr<acc>(), norm.data_ptr<acc>(), rows, n, lanes,
        static_cast<acc>(temperature), static_cast<acc>(1.0 / temperature),
        static_cast<acc>(1.0 / static_cast<double>(n)), code);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, norm, stats};
}

template <typename scalar_t, typename acc>
__global__ void backward_kernel(const acc* __restrict__ grad_out, const acc* __restrict__ norm,
                                const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                const acc* __restrict__ w, const acc* __restrict__ stats, scalar_t* __restrict__ g,
                                int64_t rows, int64_t n, acc tau, acc inv_tau, acc inv_n) {
  const acc coef = ld::normalised<acc>(grad_out[0], norm[0]) * inv_n;
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / n;
    const acc wr = ld::row_weight(w, row);
    acc v = 0;
    if (wr != acc(0)) {  // a row of weight 0 is not read: its gradient is exactly 0 (docs/math.md §0)
      const acc* st = stats + row * kStats;
      const acc max_s = st[kMaxS], max_t = st[kMaxT], log_sum_t = st[kLogSumT];
      const acc si = static_cast<acc>(s[i]), ti = static_cast<acc>(t[i]);
      if (st[kNear] != acc(0)) {
        const acc c0 = (static_cast<acc>(s[row * n]) - max_s) - (static_cast<acc>(t[row * n]) - max_t);
        v = near_grad_element<acc>(((si - max_s) - (ti - max_t)) - c0, ti, max_t, log_sum_t, st[kShift], inv_tau);
      } else {
        v = tau * grad_element<acc>(si, ti, max_s, st[kLogSumS], max_t, log_sum_t, inv_tau);
      }
      v *= coef * wr;
    }
    g[i] = static_cast<scalar_t>(v);
  }
}

at::Tensor ld_loss_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student, const at::Tensor& teacher,
                                 const c10::optional<at::Tensor>& weight, const at::Tensor& norm,
                                 const at::Tensor& row_stats, double temperature) {
  check_ld_loss_args(student, teacher, weight, temperature);
  check_ld_loss_backward_args(grad_out, student, norm, row_stats);
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), st = row_stats.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const auto acc_type = acc_dtype(s.scalar_type());
  // Both are 0-dim tensors of the accumulation dtype already; .to() is then a no-op (no kernel).
  const at::Tensor g_out = grad_out.to(acc_type).reshape({1}), z = norm.to(acc_type).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_ld_loss_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    backward_kernel<scalar_t, acc><<<blocks_for(s.numel(), kThreads, 8192), kThreads, 0, stream>>>(
        g_out.const_data_ptr<acc>(), z.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(),
        t.const_data_ptr<scalar_t>(), weight.has_value() ? w.const_data_ptr<acc>() : nullptr,
        st.const_data_ptr<acc>(), grad.data_ptr<scalar_t>(), s.size(0), s.size(1), static_cast<acc>(temperature),
        static_cast<acc>(1.0 / temperature), static_cast<acc>(1.0 / static_cast<double>(s.size(1))));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("ld_loss", &ld_loss_cuda);
  m.impl("ld_loss_backward", &ld_loss_backward_cuda);
}

}  // namespace kdops
