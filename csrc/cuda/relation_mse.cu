// CUDA kernels of the FGD relation loss (docs/math.md §4); same algorithm as kdops/triton/relation_mse.py.
// Forward: one block per (n, c) row (grid-strided) sums r = S - T + delta and r^2; one block adds the
// row partials in a fixed order. Backward: one elementwise pass, 2 grad / N read on the device.
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers we do not use.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kdops/math/relation_mse.h"
#include "../ops/relation_mse.h"
#include "reduce.cuh"

namespace kdops {
namespace {

using namespace kdops::cuda;
constexpr int kThreads = 256;

template <typename scalar_t, typename acc>
__global__ void row_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                           const acc* __restrict__ ds, const acc* __restrict__ dt, acc* __restrict__ row_sum,
                           acc* __restrict__ row_sq, int64_t rows, int64_t HW) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const acc delta = ds[row] - dt[row];
    KahanSum<acc> local_sum, local_sq;
    for (int64_t j = threadIdx.x; j < HW; j += blockDim.x) {
      const acc r = relation::residual<acc, scalar_t>(s[row * HW + j], t[row * HW + j], delta);
      local_sum += r;
      local_sq += r * r;
    }
    const acc sum = block_sum(local_sum.value());
    const acc sq = block_sum(local_sq.value());
    if (threadIdx.x == 0) {
      row_sum[row] = sum;
      row_sq[row] = sq;
    }
  }
}

template <typename acc>
__global__ void finalize_kernel(const acc* __restrict__ row_sq, int64_t rows, acc inv_n, acc* __restrict__ out) {
  KahanSum<acc> local;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) local += row_sq[i];
  const acc total = block_sum(local.value());
  if (threadIdx.x == 0) out[0] = total * inv_n;
}

std::tuple<at::Tensor, at::Tensor> relation_mse_cuda(const at::Tensor& student_in, const at::Tensor& teacher_in,
                                                     const at::Tensor& delta_s_in, const at::Tensor& delta_t_in) {
  check_relation_mse_args(student_in, teacher_in, delta_s_in, delta_t_in, "kdops.relation_mse");
  const c10::cuda::CUDAGuard guard(student_in.device());
  const at::Tensor s = student_in.contiguous(), t = teacher_in.contiguous();
  const at::Tensor ds = delta_s_in.contiguous(), dt = delta_t_in.contiguous();
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const auto opts = s.options().dtype(acc_dtype(s.scalar_type()));
  at::Tensor loss = at::zeros({}, opts), row_sum = at::zeros({N, C}, opts);
  if (N * C == 0) return {loss, row_sum};
  at::Tensor row_sq = at::empty({N, C}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_relation_mse_cuda", [&] {
    using acc = acc_t<scalar_t>;
    row_kernel<scalar_t, acc><<<blocks_for(N * C, 1), kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), ds.const_data_ptr<acc>(),
        dt.const_data_ptr<acc>(), row_sum.data_ptr<acc>(), row_sq.data_ptr<acc>(), N * C, HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<acc><<<1, 1024, 0, stream>>>(row_sq.const_data_ptr<acc>(), N * C, acc(1) / static_cast<acc>(N),
                                                 loss.data_ptr<acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, row_sum};
}

template <typename scalar_t, typename acc>
__global__ void grad_kernel(const acc* __restrict__ grad, const scalar_t* __restrict__ s,
                            const scalar_t* __restrict__ t, const acc* __restrict__ ds, const acc* __restrict__ dt,
                            scalar_t* __restrict__ out, int64_t rows, int64_t HW, acc two_over_n) {
  const acc coef = grad[0] * two_over_n;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const acc delta = ds[row] - dt[row];
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = row * HW + j;
      out[i] = static_cast<scalar_t>(coef * relation::residual<acc, scalar_t>(s[i], t[i], delta));
    }
  }
}

at::Tensor relation_mse_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student_in,
                                      const at::Tensor& teacher_in, const at::Tensor& delta_s_in,
                                      const at::Tensor& delta_t_in) {
  check_relation_mse_args(student_in, teacher_in, delta_s_in, delta_t_in, "kdops.relation_mse_backward");
  check_backward_scalar(grad_out, student_in, "kdops.relation_mse_backward", "grad");
  const c10::cuda::CUDAGuard guard(student_in.device());
  const at::Tensor s = student_in.contiguous(), t = teacher_in.contiguous();
  at::Tensor grad = at::empty_like(s, at::MemoryFormat::Contiguous);
  if (s.numel() == 0) return grad;
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const at::Tensor g = grad_out.to(acc_dtype(s.scalar_type())).reshape({1});
  const at::Tensor ds = delta_s_in.contiguous(), dt = delta_t_in.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_relation_mse_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const dim3 grid(blocks_for(HW, kThreads, 64), static_cast<unsigned int>(std::min<int64_t>(N * C, 65535)));
    grad_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
        g.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), ds.const_data_ptr<acc>(),
        dt.const_data_ptr<acc>(), grad.data_ptr<scalar_t>(), N * C, HW, acc(2) / static_cast<acc>(N));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("relation_mse", &relation_mse_cuda);
  m.impl("relation_mse_backward", &relation_mse_backward_cuda);
}

}  // namespace kdops
