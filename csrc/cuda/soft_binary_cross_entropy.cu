// CUDA kernels of the binary weighted soft cross-entropy (docs/math.md §7), math in
// include/kdops/math/soft_binary_cross_entropy.h. One launch forward: a grid-stride pass sums each
// thread's anchors, blocks reduce, the last block adds the block partials in order (grid_reduce.cuh).
// One launch backward: elementwise. A label other than 0, 1 or ignore_index makes the loss NaN.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grid_reduce.cuh"
#include "kdops/math/soft_binary_cross_entropy.h"
#include "../ops/soft_binary_cross_entropy.h"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::soft_bce;
constexpr int kThreads = 256;

template <typename scalar_t, typename acc>
__global__ void forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               const int64_t* __restrict__ target, acc* __restrict__ partial, int* __restrict__ ticket,
                               acc* __restrict__ out, acc* __restrict__ norm, int64_t n, Coeffs<acc> k,
                               int64_t ignore_index) {
  KahanSum<acc> total;
  acc count = 0;  // whole numbers: exact
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    total += element<acc, false>(static_cast<acc>(s[i]), static_cast<acc>(t[i]), target, i, ignore_index, k);
    count += kept(target, i, ignore_index) ? acc(1) : acc(0);
  }
  const acc mine[2] = {block_sum(total.value()), block_sum(count)};
  acc sums[2];
  if (last_block_sums<acc, 2>(mine, partial, ticket, sums) && threadIdx.x == 0) {
    out[0] = sums[1] == acc(0) ? acc(0) : sums[0] / sums[1];
    norm[0] = sums[1];
  }
}

std::tuple<at::Tensor, at::Tensor> soft_binary_cross_entropy_cuda(const at::Tensor& student,
                                                                  const at::Tensor& teacher,
                                                                  const c10::optional<at::Tensor>& target,
                                                                  double pos_weight, double neg_weight,
                                                                  double temperature, double mu, int64_t ignore_index) {
  check_soft_binary_cross_entropy_args(student, teacher, target, temperature);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  const unsigned int blocks = blocks_for(s.numel(), kThreads * 4, 1024);  // >= 4 anchors per thread
  at::Tensor partial = at::empty({static_cast<int64_t>(blocks) * 2}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ticket = zeroed_ticket(s, stream);
  const Params params{pos_weight, neg_weight, temperature, mu};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_soft_binary_cross_entropy_cuda", [&] {
    using acc = acc_t<scalar_t>;
    forward_kernel<scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
        target.has_value() ? y.const_data_ptr<int64_t>() : nullptr, partial.data_ptr<acc>(), ticket.data_ptr<int>(),
        out.data_ptr<acc>(), norm.data_ptr<acc>(), s.numel(), Coeffs<acc>(params), ignore_index);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, norm};
}

template <typename scalar_t, typename acc>
__global__ void backward_kernel(const acc* __restrict__ grad_out, const acc* __restrict__ norm,
                                const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                const int64_t* __restrict__ target, scalar_t* __restrict__ g, int64_t n,
                                Coeffs<acc> k, int64_t ignore_index) {
  const acc count = norm[0];
  const acc coef = count == acc(0) ? acc(0) : grad_out[0] / count;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    g[i] = static_cast<scalar_t>(
        coef * element<acc, true>(static_cast<acc>(s[i]), static_cast<acc>(t[i]), target, i, ignore_index, k));
}

at::Tensor soft_binary_cross_entropy_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student,
                                                   const at::Tensor& teacher, const c10::optional<at::Tensor>& target,
                                                   const at::Tensor& norm, double pos_weight, double neg_weight,
                                                   double temperature, double mu, int64_t ignore_index) {
  check_soft_binary_cross_entropy_args(student, teacher, target, temperature);
  check_backward_scalar(grad_out, student, "kdops.soft_binary_cross_entropy_backward", "grad");
  check_backward_scalar(norm, student, "kdops.soft_binary_cross_entropy_backward", "norm");
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  const auto acc_type = acc_dtype(s.scalar_type());
  const at::Tensor g_out = grad_out.to(acc_type).reshape({1}), n = norm.to(acc_type).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Params params{pos_weight, neg_weight, temperature, mu};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(),
                                  "kdops_soft_binary_cross_entropy_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    backward_kernel<scalar_t, acc><<<blocks_for(s.numel(), kThreads, 8192), kThreads, 0, stream>>>(
        g_out.const_data_ptr<acc>(), n.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(),
        t.const_data_ptr<scalar_t>(), target.has_value() ? y.const_data_ptr<int64_t>() : nullptr,
        grad.data_ptr<scalar_t>(), s.numel(), Coeffs<acc>(params), ignore_index);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("soft_binary_cross_entropy", &soft_binary_cross_entropy_cuda);
  m.impl("soft_binary_cross_entropy_backward", &soft_binary_cross_entropy_backward_cuda);
}

}  // namespace kdops
