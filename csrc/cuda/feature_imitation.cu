// CUDA kernels of masked feature imitation (docs/math.md §5).
// Forward: a fixed grid accumulates M * rho(S - T) into per-block partials, and one block adds
// them (and sum(M) for normalize="mask") in a fixed order: deterministic, no atomics, no host sync.
// Backward: one elementwise pass writing dS; grad / Z is read on the device.
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers we do not use.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kdops/math/feature_imitation.h"
#include "../ops/feature_imitation.h"
#include "reduce.cuh"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::imitation;
constexpr int kThreads = 256;

// Rows (n * C + c) along blockIdx.y, pixels along blockIdx.x and the threads.
inline dim3 row_pixel_grid(int64_t rows, int64_t hw) {
  return dim3(blocks_for(hw, kThreads, 32), static_cast<unsigned int>(std::min<int64_t>(rows, 2048)));
}

template <typename scalar_t, typename acc>
__global__ void partial_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               const scalar_t* __restrict__ m, acc* __restrict__ partial, int64_t rows, int64_t C,
                               int64_t HW, int loss) {
  KahanSum<acc> local;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const scalar_t* mn = m == nullptr ? nullptr : m + (row / C) * HW;
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const acc r = rho<acc>(static_cast<acc>(s[row * HW + j]) - static_cast<acc>(t[row * HW + j]), loss);
      local += mn == nullptr ? r : weighted<acc>(static_cast<acc>(mn[j]), r);
    }
  }
  const acc total = block_sum(local.value());
  if (threadIdx.x == 0) partial[blockIdx.y * gridDim.x + blockIdx.x] = total;
}

template <typename scalar_t, typename acc>
__global__ void finalize_kernel(const acc* __restrict__ partial, int64_t partials, const scalar_t* __restrict__ m,
                                int64_t N, int64_t C, int64_t HW, int normalize, acc* __restrict__ out,
                                acc* __restrict__ norm) {
  KahanSum<acc> local;
  for (int64_t i = threadIdx.x; i < partials; i += blockDim.x) local += partial[i];
  const acc total = block_sum(local.value());
  acc z;
  if (normalize == kBatch) {
    z = static_cast<acc>(N);
  } else if (normalize == kMean) {
    z = static_cast<acc>(N * C * HW);
  } else if (m == nullptr) {
    z = static_cast<acc>(C) * static_cast<acc>(N * HW);
  } else {
    KahanSum<acc> mask_local;
    for (int64_t i = threadIdx.x; i < N * HW; i += blockDim.x) mask_local += static_cast<acc>(m[i]);
    z = static_cast<acc>(C) * block_sum(mask_local.value());
  }
  if (threadIdx.x == 0) {
    out[0] = safe_div<acc>(total, z);
    norm[0] = z;
  }
}

std::tuple<at::Tensor, at::Tensor> feature_imitation_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                          const c10::optional<at::Tensor>& mask, int64_t loss,
                                                          int64_t normalize) {
  check_feature_imitation_args(student, teacher, mask, loss, normalize);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const dim3 grid = row_pixel_grid(std::max<int64_t>(N * C, 1), std::max<int64_t>(HW, 1));
  at::Tensor partial = at::empty({static_cast<int64_t>(grid.x) * grid.y}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_feature_imitation_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* mp = mask.has_value() ? m.const_data_ptr<scalar_t>() : nullptr;
    partial_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), mp, partial.data_ptr<acc>(), N * C, C, HW,
        static_cast<int>(loss));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    finalize_kernel<scalar_t, acc><<<1, 1024, 0, stream>>>(partial.const_data_ptr<acc>(), partial.numel(), mp, N, C,
                                                           HW, static_cast<int>(normalize), out.data_ptr<acc>(),
                                                           norm.data_ptr<acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, norm};
}

template <typename scalar_t, typename acc>
__global__ void grad_kernel(const acc* __restrict__ grad_out, const acc* __restrict__ norm,
                            const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                            const scalar_t* __restrict__ m, scalar_t* __restrict__ g, int64_t rows, int64_t C,
                            int64_t HW, int loss) {
  const acc coef = safe_div<acc>(grad_out[0], norm[0]);
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const scalar_t* mn = m == nullptr ? nullptr : m + (row / C) * HW;
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < HW;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = row * HW + j;
      const acc v = coef * rho_grad<acc>(static_cast<acc>(s[i]) - static_cast<acc>(t[i]), loss);
      g[i] = static_cast<scalar_t>(mn == nullptr ? v : weighted<acc>(static_cast<acc>(mn[j]), v));
    }
  }
}

at::Tensor feature_imitation_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student,
                                           const at::Tensor& teacher, const c10::optional<at::Tensor>& mask,
                                           const at::Tensor& norm, int64_t loss) {
  check_feature_imitation_args(student, teacher, mask, loss, 0);
  check_backward_scalar(grad_out, student, "kdops.feature_imitation_backward", "grad");
  check_backward_scalar(norm, student, "kdops.feature_imitation_backward", "norm");
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const auto acc_type = acc_dtype(s.scalar_type());
  const at::Tensor g_out = grad_out.to(acc_type).reshape({1}), z = norm.to(acc_type).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_feature_imitation_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const dim3 grid(blocks_for(HW, kThreads, 64), static_cast<unsigned int>(std::min<int64_t>(N * C, 65535)));
    grad_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(
        g_out.const_data_ptr<acc>(), z.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(),
        t.const_data_ptr<scalar_t>(), mask.has_value() ? m.const_data_ptr<scalar_t>() : nullptr,
        grad.data_ptr<scalar_t>(), N * C, C, HW, static_cast<int>(loss));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("feature_imitation", &feature_imitation_cuda);
  m.impl("feature_imitation_backward", &feature_imitation_backward_cuda);
}

}  // namespace kdops
