// CUDA kernels of the teacher-bounded L2 loss (docs/math.md §7), math in include/kdops/math/bounded_regression.h.
// One launch forward: one thread per row (D is small, 4 for boxes) in a grid-stride loop, blocks
// reduce, the last block adds the block partials in order (grid_reduce.cuh). One launch backward:
// one thread per row recomputes its bound and writes the row's D gradients.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grid_reduce.cuh"
#include "kdops/math/bounded_regression.h"
#include "../ops/bounded_regression.h"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::bounded;
constexpr int kThreads = 256;

template <typename scalar_t, typename acc>
__global__ void forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               const scalar_t* __restrict__ y, const acc* __restrict__ weight,
                               acc* __restrict__ partial, int* __restrict__ ticket, acc* __restrict__ out,
                               acc* __restrict__ norm, int64_t rows, int64_t D, acc margin) {
  KahanSum<acc> total;
  acc count = 0;  // whole numbers: exact
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc e_s, e_t;
    row_errors<scalar_t, acc>(s + row * D, t + row * D, y + row * D, D, &e_s, &e_t);
    total += weighted<acc>(row_weight<acc>(weight, row),
                           active<acc>(e_s, e_t, margin) ? e_s : inactive_term<acc>(e_s, e_t, margin));
    count += row_counts<acc>(weight, row);
  }
  const acc mine[2] = {block_sum(total.value()), block_sum(count)};
  acc sums[2];
  if (last_block_sums<acc, 2>(mine, partial, ticket, sums) && threadIdx.x == 0) {
    out[0] = sums[1] == acc(0) ? acc(0) : sums[0] / sums[1];
    norm[0] = sums[1];
  }
}

std::tuple<at::Tensor, at::Tensor> bounded_regression_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                           const at::Tensor& target,
                                                           const c10::optional<at::Tensor>& weight, double margin) {
  check_bounded_regression_args(student, teacher, target, weight);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), y = target.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const unsigned int blocks = blocks_for(s.size(0), kThreads, 1024);
  at::Tensor partial = at::empty({static_cast<int64_t>(blocks) * 2}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ticket = zeroed_ticket(s, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_bounded_regression_cuda", [&] {
    using acc = acc_t<scalar_t>;
    forward_kernel<scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
        weight.has_value() ? w.const_data_ptr<acc>() : nullptr, partial.data_ptr<acc>(), ticket.data_ptr<int>(),
        out.data_ptr<acc>(), norm.data_ptr<acc>(), s.size(0), s.size(1), static_cast<acc>(margin));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, norm};
}

template <typename scalar_t, typename acc>
__global__ void backward_kernel(const acc* __restrict__ grad_out, const acc* __restrict__ norm,
                                const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                const scalar_t* __restrict__ y, const acc* __restrict__ weight,
                                scalar_t* __restrict__ g, int64_t rows, int64_t D, acc margin) {
  const acc count = norm[0];
  const acc coef = count == acc(0) ? acc(0) : grad_out[0] / count;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc e_s, e_t;
    row_errors<scalar_t, acc>(s + row * D, t + row * D, y + row * D, D, &e_s, &e_t);
    const acc w = gradient_weight<acc>(row_weight<acc>(weight, row), e_s, e_t, margin);
    const acc scale = active<acc>(e_s, e_t, margin) ? acc(2) * coef : inactive_term<acc>(e_s, e_t, margin);
    for (int64_t k = 0; k < D; ++k) {
      const int64_t i = row * D + k;
      g[i] = static_cast<scalar_t>(weighted<acc>(w, scale * (static_cast<acc>(s[i]) - static_cast<acc>(y[i]))));
    }
  }
}

at::Tensor bounded_regression_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student,
                                            const at::Tensor& teacher, const at::Tensor& target,
                                            const c10::optional<at::Tensor>& weight, const at::Tensor& norm,
                                            double margin) {
  check_bounded_regression_args(student, teacher, target, weight);
  check_backward_scalar(grad_out, student, "kdops.bounded_regression_backward", "grad");
  check_backward_scalar(norm, student, "kdops.bounded_regression_backward", "norm");
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), y = target.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const auto acc_type = acc_dtype(s.scalar_type());
  const at::Tensor g_out = grad_out.to(acc_type).reshape({1}), n = norm.to(acc_type).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_bounded_regression_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    backward_kernel<scalar_t, acc><<<blocks_for(s.size(0), kThreads, 8192), kThreads, 0, stream>>>(
        g_out.const_data_ptr<acc>(), n.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(),
        t.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
        weight.has_value() ? w.const_data_ptr<acc>() : nullptr, grad.data_ptr<scalar_t>(), s.size(0), s.size(1),
        static_cast<acc>(margin));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("bounded_regression", &bounded_regression_cuda);
  m.impl("bounded_regression_backward", &bounded_regression_backward_cuda);
}

}  // namespace kdops
