// CUDA kernels of quality-focal KD (docs/math.md §12), math in include/kdops/math/quality_focal_kd.h. One
// launch forward: a grid-stride pass over the elements (each thread follows its row without a division per
// element), blocks reduce, the last block adds the block partials in order and divides by Z
// (grid_reduce.cuh). One launch backward: elementwise.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "grid_reduce.cuh"
#include "kdops/math/quality_focal_kd.h"
#include "kdops/math/weighted.h"
#include "../ops/quality_focal_kd.h"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::qfkd;
constexpr int kThreads = 256;

// A thread's position in the (rows, C) matrix along a grid-stride loop: element i, its row and column,
// advanced by the stride with one compare instead of a 64-bit division per element.
struct Cursor {
  int64_t i, row, col, row_step, col_step, C;

  __device__ Cursor(int64_t first, int64_t stride, int64_t classes)
      : i(first), row(first / classes), col(first % classes), row_step(stride / classes),
        col_step(stride % classes), C(classes) {}

  __device__ void advance(int64_t stride) {
    i += stride;
    row += row_step;
    col += col_step;
    if (col >= C) {
      col -= C;
      ++row;
    }
  }
};

template <Beta kB, bool kWeighted, typename scalar_t, typename acc>
__global__ void forward_kernel(const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                               const acc* __restrict__ weight, acc* __restrict__ partial, int* __restrict__ ticket,
                               acc* __restrict__ out, acc* __restrict__ norm, int64_t rows, int64_t C, acc beta,
                               Normalize normalize) {
  const int64_t n = rows * C;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  KahanSum<acc> total, weights;
  for (Cursor pos(first, stride, C); pos.i < n; pos.advance(stride)) {
    const acc f = loss<kB, acc>(static_cast<acc>(s[pos.i]), static_cast<acc>(t[pos.i]), beta);
    total += kWeighted ? weighted<acc>(weight[pos.row], f) : f;
  }
  if (kWeighted)
    for (int64_t row = first; row < rows; row += stride) weights += weight[row];
  const acc mine[2] = {block_sum(total.value()), block_sum(weights.value())};
  acc sums[2];
  if (last_block_sums<acc, 2>(mine, partial, ticket, sums) && threadIdx.x == 0) {
    const acc z = normalize == Normalize::kSum                       ? acc(1)
                  : normalize == Normalize::kWeight && kWeighted ? sums[1]
                                                                    : static_cast<acc>(rows);
    out[0] = z == acc(0) ? acc(0) : sums[0] / z;
    norm[0] = z;
  }
}

std::tuple<at::Tensor, at::Tensor> quality_focal_kd_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                         const c10::optional<at::Tensor>& weight, double beta,
                                                         c10::string_view normalize) {
  check_quality_focal_kd_args(student, teacher, weight, beta);
  const Normalize z = parse_quality_focal_kd_normalize(normalize);
  const c10::cuda::CUDAGuard guard(student.device());
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const unsigned int blocks = blocks_for(s.numel(), kThreads * 4, 1024);  // >= 4 elements per thread
  at::Tensor partial = at::empty({static_cast<int64_t>(blocks) * 2}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor ticket = zeroed_ticket(s, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_quality_focal_kd_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc* wp = weight.has_value() ? w.const_data_ptr<acc>() : nullptr;
    with_beta(beta, [&](auto kind) {
      constexpr Beta kB = decltype(kind)::value;
      if (wp != nullptr) {
        forward_kernel<kB, true, scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
            s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), wp, partial.data_ptr<acc>(),
            ticket.data_ptr<int>(), out.data_ptr<acc>(), norm.data_ptr<acc>(), s.size(0), s.size(1),
            static_cast<acc>(beta), z);
      } else {
        forward_kernel<kB, false, scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
            s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), wp, partial.data_ptr<acc>(),
            ticket.data_ptr<int>(), out.data_ptr<acc>(), norm.data_ptr<acc>(), s.size(0), s.size(1),
            static_cast<acc>(beta), z);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, norm};
}

template <Beta kB, bool kWeighted, typename scalar_t, typename acc>
__global__ void backward_kernel(const acc* __restrict__ grad_out, const acc* __restrict__ norm,
                                const scalar_t* __restrict__ s, const scalar_t* __restrict__ t,
                                const acc* __restrict__ weight, scalar_t* __restrict__ g, int64_t rows, int64_t C,
                                acc beta) {
  const acc z = norm[0];
  const acc coef = z == acc(0) ? acc(0) : grad_out[0] / z;
  const int64_t n = rows * C;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (Cursor pos(blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, stride, C); pos.i < n;
       pos.advance(stride)) {
    const acc d = coef * grad<kB, acc>(static_cast<acc>(s[pos.i]), static_cast<acc>(t[pos.i]), beta);
    g[pos.i] = static_cast<scalar_t>(kWeighted ? weighted<acc>(weight[pos.row], d) : d);
  }
}

at::Tensor quality_focal_kd_backward_cuda(const at::Tensor& grad_out, const at::Tensor& student,
                                          const at::Tensor& teacher, const c10::optional<at::Tensor>& weight,
                                          const at::Tensor& norm, double beta) {
  check_quality_focal_kd_args(student, teacher, weight, beta);
  check_backward_scalar(grad_out, student, "kdops.quality_focal_kd_backward", "grad");
  check_backward_scalar(norm, student, "kdops.quality_focal_kd_backward", "norm");
  const c10::cuda::CUDAGuard guard(student.device());
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const auto acc_type = acc_dtype(s.scalar_type());
  const at::Tensor g_out = grad_out.to(acc_type).reshape({1}), z = norm.to(acc_type).reshape({1});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int blocks = blocks_for(s.numel(), kThreads, 8192);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_quality_focal_kd_backward_cuda",
                                  [&] {
    using acc = acc_t<scalar_t>;
    const acc* wp = weight.has_value() ? w.const_data_ptr<acc>() : nullptr;
    with_beta(beta, [&](auto kind) {
      constexpr Beta kB = decltype(kind)::value;
      if (wp != nullptr) {
        backward_kernel<kB, true, scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
            g_out.const_data_ptr<acc>(), z.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(),
            t.const_data_ptr<scalar_t>(), wp, grad.data_ptr<scalar_t>(), s.size(0), s.size(1),
            static_cast<acc>(beta));
      } else {
        backward_kernel<kB, false, scalar_t, acc><<<blocks, kThreads, 0, stream>>>(
            g_out.const_data_ptr<acc>(), z.const_data_ptr<acc>(), s.const_data_ptr<scalar_t>(),
            t.const_data_ptr<scalar_t>(), wp, grad.data_ptr<scalar_t>(), s.size(0), s.size(1),
            static_cast<acc>(beta));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("quality_focal_kd", &quality_focal_kd_cuda);
  m.impl("quality_focal_kd_backward", &quality_focal_kd_backward_cuda);
}

}  // namespace kdops
