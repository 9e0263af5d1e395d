// CPU kernels of the class-weighted soft cross-entropy (docs/math.md §7). Forward: per row, one pass for the
// maxima and one for the exp-sums (math/soft_cross_entropy.h); rows are cut into fixed chunks whose
// sums are added in order (deterministic). Backward: one pass per row from the saved row_stats.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include "gradient_buffer.h"
#include "chunked_sum.h"
#include "isa.h"
#include "parallel.h"
#include "row_math.h"
#include "row_tail.h"
#include "kdops/math/soft_cross_entropy.h"
#include "../ops/soft_cross_entropy.h"

namespace kdops {
namespace {

using namespace soft_ce;

// CPU tensors: checking the labels up front is cheap and gives a clear error (the GPU kernels
// turn a bad label into a NaN loss instead, since raising would need a host sync).
void check_labels(const at::Tensor& target, int64_t classes, int64_t ignore_index) {
  const int64_t* y = target.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < target.numel(); ++i)
    TORCH_CHECK(y[i] == ignore_index || label_ok(y[i], classes), "kdops.soft_cross_entropy: target[", i, "] = ", y[i],
                " is outside [0, ", classes, ") and is not ignore_index (", ignore_index, ")");
}

template <typename acc>
struct RowSums {
  acc s = 0, t = 0, a = 0, b = 0, one = 0;  // sum_s, sum_t, A, B, sum_1 of math/soft_cross_entropy.h
};

// Adds items [0, n) of one row to `sums`, each scaled by mask[c] when kMasked.
template <bool kMasked, typename T, typename acc>
KDOPS_VEC_HD void add_exp_sums(const T* zs, const T* zt, const acc* wp, int64_t n, acc ms, acc mt, acc inv_t,
                               bool separate_sum1, const acc* mask, RowSums<acc>& sums) {
  acc sum_s = 0, sum_t = 0, a = 0, b = 0, sum_1 = 0;
#pragma omp simd reduction(+ : sum_s, sum_t, a, b)
  for (int64_t c = 0; c < n; ++c) {
    const acc m = kMasked ? mask[c] : acc(1);
    const acc ds = static_cast<acc>(zs[c]) - ms;
    const acc et = m * math::exp_<acc>((static_cast<acc>(zt[c]) - mt) * inv_t);
    const acc wet = wp[c] * et;
    sum_s += m * math::exp_<acc>(ds * inv_t);
    sum_t += et;
    a += wet;
    b += kMasked && m == acc(0) ? acc(0) : wet * ds;  // a select, not 0 * ds: ds may be -inf
  }
  if (separate_sum1) {
#pragma omp simd reduction(+ : sum_1)
    for (int64_t c = 0; c < n; ++c)
      sum_1 += (kMasked ? mask[c] : acc(1)) * math::exp_<acc>(static_cast<acc>(zs[c]) - ms);
  }
  sums.s += sum_s;
  sums.t += sum_t;
  sums.a += a;
  sums.b += b;
  sums.one += sum_1;
}

// The summed loss and the number of kept rows over rows [begin, end); each row's statistics go to `st_all`.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES std::array<acc, 2> forward_rows(const scalar_t* sp, const scalar_t* tp, const acc* wp,
                                                 const int64_t* target, int64_t begin, int64_t end, int64_t C,
                                                 acc inv_t, acc mu, bool separate_sum1, int64_t ignore_index,
                                                 acc* st_all) {
  acc loss_sum = 0, kept_rows = 0;
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* zs = sp + row * C;
    const scalar_t* zt = tp + row * C;
    acc ms, mt;
    cpu::row_maxima(zs, zt, C, ms, mt);
    RowSums<acc> sums;
    const int64_t main = C >= cpu::kTailLanes ? cpu::whole_blocks(C) : C;
    add_exp_sums<false>(zs, zt, wp, main, ms, mt, inv_t, separate_sum1, static_cast<const acc*>(nullptr), sums);
    if (main < C) {
      const int64_t last = C - cpu::kTailLanes;
      add_exp_sums<true>(zs + last, zt + last, wp + last, cpu::kTailLanes, ms, mt, inv_t, separate_sum1,
                         cpu::tail_mask<acc>(C), sums);
    }
    const acc sum_s = sums.s, sum_t = sums.t, a = sums.a, b = sums.b, sum_1 = separate_sum1 ? sums.one : sums.s;
    const acc loss = finish_row(zs, target, row, C, ms, mt, inv_t, sum_s, sum_t, sum_1, a, b, mu,
                                st_all + row * kStats);
    if (row_kept(target, row, ignore_index)) {
      loss_sum += loss;
      kept_rows += acc(1);
    }
  }
  return {loss_sum, kept_rows};
}

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, const at::Tensor& w, const int64_t* target,
                  double temperature, double mu_d, int64_t ignore_index, at::Tensor& out, at::Tensor& norm,
                  at::Tensor& stats) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), C = s.size(1);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const acc* wp = w.const_data_ptr<acc>();
  acc* st_all = stats.data_ptr<acc>();
  const acc inv_t = acc(1) / static_cast<acc>(temperature), mu = static_cast<acc>(mu_d);
  const bool separate_sum1 = target != nullptr && temperature != 1.0;
  auto sums = cpu::chunked_sum<acc, 2>(rows, cpu::items_per_chunk(C), [&](int64_t begin, int64_t end) {
    return forward_rows<scalar_t>(sp, tp, wp, target, begin, end, C, inv_t, mu, separate_sum1, ignore_index, st_all);
  });
  out.fill_(sums[1] == acc(0) ? acc(0) : sums[0] / sums[1]);
  norm.fill_(sums[1]);
}

at::Tensor weights_or_ones(const c10::optional<at::Tensor>& class_weight, const at::Tensor& student) {
  if (class_weight.has_value()) return class_weight->contiguous();
  return at::ones({student.size(1)}, student.options().dtype(acc_dtype(student.scalar_type())));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_cross_entropy_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const c10::optional<at::Tensor>& class_weight,
    const c10::optional<at::Tensor>& target, double temperature, double mu, int64_t ignore_index) {
  check_soft_cross_entropy_args(student, teacher, class_weight, target, temperature);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  at::Tensor stats = at::empty({student.size(0), kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), w = weights_or_ones(class_weight, student);
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  if (target.has_value()) check_labels(y, student.size(1), ignore_index);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_soft_cross_entropy_cpu", [&] {
    forward_impl<scalar_t>(s, t, w, target.has_value() ? y.const_data_ptr<int64_t>() : nullptr, temperature, mu,
                           ignore_index, out, norm, stats);
  });
  return {out, norm, stats};
}

// Gradient items [0, n) of one row (not the one-hot term). A function, not a lambda: a lambda's call
// operator is compiled for the baseline ISA, not for the caller's clone.
template <bool kHasTarget, bool kUnitTemperature, typename scalar_t, typename acc>
KDOPS_VEC_HD void gradient_items(const scalar_t* zs, const scalar_t* zt, const acc* wp, int64_t n, acc max_s, acc log_sum_s,
                                 acc max_t, acc log_sum_t, acc log_sum_1, acc weight, acc coef, acc inv_t, acc mu,
                                 scalar_t* g) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c)
    g[c] = static_cast<scalar_t>(coef * grad_element<acc, kHasTarget, kUnitTemperature>(
                                         static_cast<acc>(zs[c]), static_cast<acc>(zt[c]), wp[c], max_s, log_sum_s,
                                         max_t, log_sum_t, log_sum_1, weight, inv_t, false, mu));
}

// One row of the gradient; the switches are template parameters so the loop body has no branch.
template <bool kHasTarget, bool kUnitTemperature, typename scalar_t, typename acc>
KDOPS_VEC_HD void gradient_row(const scalar_t* zs, const scalar_t* zt, const acc* wp, const acc* st, int64_t C, int64_t label,
                  acc coef, acc inv_t, acc mu, scalar_t* g) {
  const acc max_s = st[kMaxS], log_sum_s = st[kLogSumS], max_t = st[kMaxT], log_sum_t = st[kLogSumT];
  const acc log_sum_1 = st[kLogSum1], weight = st[kWeight];
  const int64_t main = C >= cpu::kTailLanes ? cpu::whole_blocks(C) : C;
  gradient_items<kHasTarget, kUnitTemperature>(zs, zt, wp, main, max_s, log_sum_s, max_t, log_sum_t, log_sum_1,
                                               weight, coef, inv_t, mu, g);
  if (main < C) {  // the last block again: the overlap gets the same values
    const int64_t last = C - cpu::kTailLanes;
    gradient_items<kHasTarget, kUnitTemperature>(zs + last, zt + last, wp + last, cpu::kTailLanes, max_s, log_sum_s,
                                                 max_t, log_sum_t, log_sum_1, weight, coef, inv_t, mu, g + last);
  }
  if (label >= 0)  // the one-hot term, outside the vector loop
    g[label] = static_cast<scalar_t>(coef * grad_element<acc, kHasTarget, kUnitTemperature>(
                                                static_cast<acc>(zs[label]), static_cast<acc>(zt[label]), wp[label],
                                                max_s, log_sum_s, max_t, log_sum_t, log_sum_1, weight, inv_t, true, mu));
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void backward_rows(const scalar_t* sp, const scalar_t* tp, const acc* wp, const int64_t* target,
                                    const acc* st_all, int64_t begin, int64_t end, int64_t C, acc coef, acc inv_t,
                                    acc mu, bool unit_t, int64_t ignore_index, scalar_t* gp) {
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* zs = sp + row * C;
    const scalar_t* zt = tp + row * C;
    const acc* st = st_all + row * kStats;
    scalar_t* g = gp + row * C;
    if (target == nullptr) {
      gradient_row<false, false>(zs, zt, wp, st, C, -1, coef, inv_t, mu, g);
    } else if (target[row] == ignore_index) {
      for (int64_t c = 0; c < C; ++c) g[c] = scalar_t(0);
    } else if (unit_t) {
      gradient_row<true, true>(zs, zt, wp, st, C, target[row], coef, inv_t, mu, g);
    } else {
      gradient_row<true, false>(zs, zt, wp, st, C, target[row], coef, inv_t, mu, g);
    }
  }
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& s, const at::Tensor& t, const at::Tensor& w,
                   const int64_t* target, const at::Tensor& stats, double temperature, double mu_d,
                   int64_t ignore_index, at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), C = s.size(1);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const acc* wp = w.const_data_ptr<acc>();
  const acc* st_all = stats.const_data_ptr<acc>();
  scalar_t* gp = grad.data_ptr<scalar_t>();
  const acc coef = static_cast<acc>(coef_d), inv_t = acc(1) / static_cast<acc>(temperature);
  const acc mu = static_cast<acc>(mu_d);
  const bool unit_t = temperature == 1.0;
  cpu::parallel_chunks(rows, cpu::items_per_chunk(C), [&](int64_t begin, int64_t end) {
    backward_rows<scalar_t>(sp, tp, wp, target, st_all, begin, end, C, coef, inv_t, mu, unit_t, ignore_index, gp);
  });
}

at::Tensor soft_cross_entropy_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student,
                                           const at::Tensor& teacher, const c10::optional<at::Tensor>& class_weight,
                                           const c10::optional<at::Tensor>& target, const at::Tensor& norm,
                                           const at::Tensor& row_stats, double temperature, double mu,
                                           int64_t ignore_index) {
  check_soft_cross_entropy_args(student, teacher, class_weight, target, temperature);
  check_soft_cross_entropy_backward_args(grad_out, student, norm, row_stats);
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  // CPU tensors: reading the two scalars is a plain memory load, not a device sync.
  const double n = norm.item<double>();
  const double coef = n == 0.0 ? 0.0 : grad_out.item<double>() / n;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), w = weights_or_ones(class_weight, student);
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  const at::Tensor st = row_stats.contiguous();
  if (target.has_value()) check_labels(y, student.size(1), ignore_index);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_soft_cross_entropy_backward_cpu",
                                  [&] {
                                    backward_impl<scalar_t>(coef, s, t, w,
                                                            target.has_value() ? y.const_data_ptr<int64_t>() : nullptr,
                                                            st, temperature, mu, ignore_index, grad);
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("soft_cross_entropy", &soft_cross_entropy_cpu);
  m.impl("soft_cross_entropy_backward", &soft_cross_entropy_backward_cpu);
}

}  // namespace kdops
