// CPU kernels of the teacher-bounded L2 loss (docs/math.md §7). Forward: one pass over rows in fixed chunks
// (chunk sums added in order: deterministic). Backward: one pass, each row's bound recomputed.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "gradient_buffer.h"
#include "chunked_sum.h"
#include "parallel.h"
#include "kdops/math/bounded_regression.h"
#include "../ops/bounded_regression.h"

namespace kdops {
namespace {

using namespace bounded;

// e_s and e_t of one row; kD > 0 fixes D at compile time (boxes: 4), so the caller's loop over rows
// vectorises with the row's D values unrolled.
template <int64_t kD, typename scalar_t, typename acc>
inline __attribute__((always_inline)) void errors(const scalar_t* rs, const scalar_t* rt, const scalar_t* ry,
                                                  int64_t D, acc* e_s, acc* e_t) {
  acc es = 0, et = 0;
  for (int64_t k = 0; k < (kD > 0 ? kD : D); ++k) {
    const acc yk = static_cast<acc>(ry[k]);
    const acc ds = static_cast<acc>(rs[k]) - yk, dt = static_cast<acc>(rt[k]) - yk;
    es += ds * ds;
    et += dt * dt;
  }
  *e_s = es;
  *e_t = et;
}

// (weighted sum, count) over rows [begin, end): a plain function, since loops over a lambda's
// captures stay scalar.
template <int64_t kD, bool kWeighted, typename scalar_t, typename acc>
std::array<acc, 2> chunk_loss(const scalar_t* sp, const scalar_t* tp, const scalar_t* yp, const acc* weight,
                              int64_t begin, int64_t end, int64_t D_runtime, acc margin) {
  const int64_t D = kD > 0 ? kD : D_runtime;  // a compile-time row stride lets the row loop vectorise
  acc total = 0, count = 0;
#pragma omp simd reduction(+ : total, count)
  for (int64_t row = begin; row < end; ++row) {
    acc e_s, e_t;
    errors<kD, scalar_t, acc>(sp + row * D, tp + row * D, yp + row * D, D, &e_s, &e_t);
    // kWeighted is a template switch: a `weight == nullptr` test per row would keep the loop scalar
    const acc w = kWeighted ? weight[row] : acc(1);
    total += weighted<acc>(w, active<acc>(e_s, e_t, margin) ? e_s : inactive_term<acc>(e_s, e_t, margin));
    count += w > acc(0) ? acc(1) : acc(0);
  }
  return {total, count};
}

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
    if (weight == nullptr)
      return D == 4 ? chunk_loss<4, false, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, margin)
                    : chunk_loss<0, false, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, margin);
    return D == 4 ? chunk_loss<4, true, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, margin)
                  : chunk_loss<0, true, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, margin);
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

template <int64_t kD, bool kWeighted, typename scalar_t, typename acc>
void chunk_grad(const scalar_t* sp, const scalar_t* tp, const scalar_t* yp, const acc* weight, int64_t begin,
                int64_t end, int64_t D_runtime, acc coef, acc margin, scalar_t* gp) {
  const int64_t D = kD > 0 ? kD : D_runtime;
#pragma omp simd
  for (int64_t row = begin; row < end; ++row) {
    acc e_s, e_t;
    errors<kD, scalar_t, acc>(sp + row * D, tp + row * D, yp + row * D, D, &e_s, &e_t);
    const acc w = gradient_weight<acc>(kWeighted ? weight[row] : acc(1), e_s, e_t, margin);
    const acc scale = active<acc>(e_s, e_t, margin) ? acc(2) * coef : inactive_term<acc>(e_s, e_t, margin);
    for (int64_t k = 0; k < D; ++k) {
      const int64_t i = row * D + k;
      gp[i] = static_cast<scalar_t>(weighted<acc>(w, scale * (static_cast<acc>(sp[i]) - static_cast<acc>(yp[i]))));
    }
  }
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
  cpu::parallel_chunks(rows, cpu::items_per_chunk(D), [&](int64_t begin, int64_t end) {
    const bool weighted = weight != nullptr;
    if (D == 4 && weighted) chunk_grad<4, true, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, coef, margin, gp);
    if (D == 4 && !weighted) chunk_grad<4, false, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, coef, margin, gp);
    if (D != 4 && weighted) chunk_grad<0, true, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, coef, margin, gp);
    if (D != 4 && !weighted) chunk_grad<0, false, scalar_t, acc>(sp, tp, yp, weight, begin, end, D, coef, margin, gp);
  });
}

at::Tensor bounded_regression_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student,
                                           const at::Tensor& teacher, const at::Tensor& target,
                                           const c10::optional<at::Tensor>& weight, const at::Tensor& norm,
                                           double margin) {
  check_bounded_regression_args(student, teacher, target, weight);
  check_backward_scalar(grad_out, student, "kdops.bounded_regression_backward", "grad");
  check_backward_scalar(norm, student, "kdops.bounded_regression_backward", "norm");
  at::Tensor grad = cpu::empty_gradient_like(student);
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
