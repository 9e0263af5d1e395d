// CPU kernels of the FGD relation loss (docs/math.md §4): one pass over S and T per direction, split by
// (n, c) rows, each summed in blocks (blocked_sum.h); the row sums are added in row order in double
// (thread-count independent).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "blocked_sum.h"
#include "gradient_buffer.h"
#include "parallel.h"
#include "kdops/math/relation_mse.h"
#include "../ops/relation_mse.h"

namespace kdops {
namespace {

inline int64_t row_grain(int64_t hw) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(hw, 1)); }

template <typename scalar_t>
void forward_impl(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& delta_s,
                  const at::Tensor& delta_t, at::Tensor& loss, at::Tensor& row_sum) {
  using acc = acc_t<scalar_t>;
  const int64_t N = student.size(0), C = student.size(1), HW = student.size(2) * student.size(3);
  const scalar_t* s = student.const_data_ptr<scalar_t>();
  const scalar_t* t = teacher.const_data_ptr<scalar_t>();
  const acc* ds = delta_s.const_data_ptr<acc>();
  const acc* dt = delta_t.const_data_ptr<acc>();
  acc* rs = row_sum.data_ptr<acc>();
  std::vector<double> row_sq(N * C);
  cpu::parallel_chunks(N * C, row_grain(HW), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* sr = s + row * HW;
      const scalar_t* tr = t + row * HW;
      const acc delta = ds[row] - dt[row];
      const auto sums = cpu::blocked_sum(HW, [&](int64_t j0, int64_t j1) {
        acc sum = 0, sq = 0;
#pragma omp simd reduction(+ : sum, sq)
        for (int64_t j = j0; j < j1; ++j) {
          const acc r = relation::residual<acc, scalar_t>(sr[j], tr[j], delta);
          sum += r;
          sq += r * r;
        }
        return std::array<acc, 2>{sum, sq};
      });
      rs[row] = static_cast<acc>(sums[0]);
      row_sq[row] = sums[1];
    }
  });
  double total = 0;
  for (double v : row_sq) total += v;
  loss.fill_(total / static_cast<double>(N));
}

std::tuple<at::Tensor, at::Tensor> relation_mse_cpu(const at::Tensor& student_in, const at::Tensor& teacher_in,
                                                    const at::Tensor& delta_s, const at::Tensor& delta_t) {
  check_relation_mse_args(student_in, teacher_in, delta_s, delta_t, "kdops.relation_mse");
  const at::Tensor student = student_in.contiguous(), teacher = teacher_in.contiguous();
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor loss = at::zeros({}, opts), row_sum = at::zeros({student.size(0), student.size(1)}, opts);
  if (student.size(0) == 0) return {loss, row_sum};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kdops_relation_mse_cpu", [&] {
    forward_impl<scalar_t>(student, teacher, delta_s.contiguous(), delta_t.contiguous(), loss, row_sum);
  });
  return {loss, row_sum};
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& delta_s,
                   const at::Tensor& delta_t, at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t N = student.size(0), C = student.size(1), HW = student.size(2) * student.size(3);
  const acc coef = static_cast<acc>(coef_d);
  const scalar_t* s = student.const_data_ptr<scalar_t>();
  const scalar_t* t = teacher.const_data_ptr<scalar_t>();
  const acc* ds = delta_s.const_data_ptr<acc>();
  const acc* dt = delta_t.const_data_ptr<acc>();
  scalar_t* out = grad.data_ptr<scalar_t>();
  cpu::parallel_chunks(N * C, row_grain(HW), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* sr = s + row * HW;
      const scalar_t* tr = t + row * HW;
      scalar_t* o = out + row * HW;
      const acc delta = ds[row] - dt[row];
#pragma omp simd
      for (int64_t j = 0; j < HW; ++j)
        o[j] = static_cast<scalar_t>(coef * relation::residual<acc, scalar_t>(sr[j], tr[j], delta));
    }
  });
}

at::Tensor relation_mse_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student_in,
                                     const at::Tensor& teacher_in, const at::Tensor& delta_s,
                                     const at::Tensor& delta_t) {
  check_relation_mse_args(student_in, teacher_in, delta_s, delta_t, "kdops.relation_mse_backward");
  check_backward_scalar(grad_out, student_in, "kdops.relation_mse_backward", "grad");
  const at::Tensor student = student_in.contiguous(), teacher = teacher_in.contiguous();
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  // CPU tensor: reading the scalar gradient is a plain memory load, not a device sync.
  const double coef = 2.0 * grad_out.item<double>() / static_cast<double>(student.size(0));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kdops_relation_mse_backward_cpu",
                                  [&] {
                                    backward_impl<scalar_t>(coef, student, teacher, delta_s.contiguous(),
                                                            delta_t.contiguous(), grad);
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("relation_mse", &relation_mse_cpu);
  m.impl("relation_mse_backward", &relation_mse_backward_cpu);
}

}  // namespace kdops
