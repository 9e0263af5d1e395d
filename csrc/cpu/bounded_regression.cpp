// CPU kernels of the teacher-bounded L2 loss (SPEC §7). Forward: one pass over rows in fixed chunks
// (chunk sums added in order: deterministic). Backward: one pass, each row's bound recomputed.
#include <torch/library.h>

#include "chunked_sum.h"
#include "kdops/math/bounded_regression.h"
#include "../ops/bounded_regression.h"

namespace kdops {
namespace {

using namespace bounded;

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, const at::Tensor& y, const acc_t<scalar_t>* weight,
                  double margin_d, at::Tensor& out, at::Tensor& norm) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), D = s.size(1);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const acc margin = static_cast<acc>(margin_d);
  auto sums = cpu::chunked_sum<acc, 2>(rows, cpu::items_per_chunk(D), [&](int64_t begin, int64_t end) {
    acc total = 0, count = 0;
    for (int64_t row = begin; row < end; ++row) {
      acc e_s, e_t;
      row_errors<scalar_t, acc>(sp + row * D, tp + row * D, yp + row * D, D, &e_s, &e_t);
      total += active<acc>(e_s, e_t, margin) ? row_weight<acc>(weight, row) * e_s : acc(0);
      count += row_counts<acc>(weight, row);
    }
    return std::array<acc, 2>{total, count};
  });
  out.fill_(sums[1] == acc(0) ? acc(0) : sums[0] / sums[1]);
  norm.fill_(sums[1]);
}

std::tuple<at::Tensor, at::Tensor> bounded_regression_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                          const at::Tensor& target,
                                                          const c10::optional<at::Tensor>& weight, double margin) {
  check_bounded_regression_args(student, teacher, target, weight);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), y = target.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_bounded_regression_cpu", [&] {
    using acc = acc_t<scalar_t>;
    forward_impl<scalar_t>(s, t, y, weight.has_value() ? w.const_data_ptr<acc>() : nullptr, margin, out, norm);
  });
  return {out, norm};
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& s, const at::Tensor& t, const at::Tensor& y,
                   const acc_t<scalar_t>* weight, double margin_d, at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), D = s.size(1);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  scalar_t* gp = grad.data_ptr<scalar_t>();
  const acc coef = static_cast<acc>(coef_d), margin = static_cast<acc>(margin_d);
  at::parallel_for(0, rows, cpu::items_per_chunk(D), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* rs = sp + row * D;
      const scalar_t* ry = yp + row * D;
      acc e_s, e_t;
      row_errors<scalar_t, acc>(rs, tp + row * D, ry, D, &e_s, &e_t);
      const acc scale = active<acc>(e_s, e_t, margin) ? acc(2) * coef * row_weight<acc>(weight, row) : acc(0);
      for (int64_t k = 0; k < D; ++k)
        gp[row * D + k] = static_cast<scalar_t>(scale * (static_cast<acc>(rs[k]) - static_cast<acc>(ry[k])));
    }
  });
}

at::Tensor bounded_regression_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student,
                                           const at::Tensor& teacher, const at::Tensor& target,
                                           const c10::optional<at::Tensor>& weight, const at::Tensor& norm,
                                           double margin) {
  check_bounded_regression_args(student, teacher, target, weight);
  TORCH_CHECK(grad_out.numel() == 1 && norm.numel() == 1,
              "kdops.bounded_regression_backward: grad and norm must be scalars");
  at::Tensor grad = at::empty_like(student, at::MemoryFormat::Contiguous);
  if (student.numel() == 0) return grad;
  // CPU tensors: reading the two scalars is a plain memory load, not a device sync.
  const double n = norm.item<double>();
  const double coef = n == 0.0 ? 0.0 : grad_out.item<double>() / n;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), y = target.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_bounded_regression_backward_cpu",
                                  [&] {
                                    using acc = acc_t<scalar_t>;
                                    backward_impl<scalar_t>(coef, s, t, y,
                                                            weight.has_value() ? w.const_data_ptr<acc>() : nullptr,
                                                            margin, grad);
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("bounded_regression", &bounded_regression_cpu);
  m.impl("bounded_regression_backward", &bounded_regression_backward_cpu);
}

}  // namespace kdops
