// Per-row math of the class-weighted soft cross-entropy (docs/math.md §7), one source for CPU and CUDA.
//
// With x = z_s / T, u = z_t / T and row maxima m_s = max z_s, m_t = max z_t, the forward sums
//   sum_s = sum_c e^{(z_s - m_s)/T},  sum_t = sum_c e^{(z_t - m_t)/T},  sum_1 = sum_c e^{z_s - m_s}
//   A = sum_c w_c e^{(z_t - m_t)/T},  B = sum_c w_c e^{(z_t - m_t)/T} (z_s - m_s)
// (shifting by the maxima keeps every term small: no cancellation for large logits). Then
//   W_i = A / sum_t = sum_c w_c P_t,   soft_i = W_i log sum_s - B / (T sum_t),
//   hard_i = log sum_1 - (z_s[y] - m_s).
// row_stats = (m_s, log sum_s, m_t, log sum_t, log sum_1, W_i) let the backward rebuild
//   P_s = e^{(z_s - m_s)/T - log sum_s}, P_t likewise, softmax(z_s) = e^{z_s - m_s - log sum_1}.
#pragma once
#include "kdops/common.h"
#include "kdops/layout.h"
#include "kdops/math/transcendental.h"

namespace kdops {
namespace soft_ce {

// Whether a row takes part, and whether its label is usable (a bad label makes the row NaN).
KDOPS_VEC_HD bool row_kept(const int64_t* target, int64_t row, int64_t ignore_index) {
  return target == nullptr || target[row] != ignore_index;
}
KDOPS_VEC_HD bool label_ok(int64_t label, int64_t classes) { return label >= 0 && label < classes; }

// The loss of one kept row from its sums; `zy_shift` is z_s[y] - m_s (unused without a target).
template <typename acc>
KDOPS_VEC_HD acc row_loss(acc inv_t, acc sum_s, acc sum_t, acc sum_1, acc a, acc b, bool has_target, bool ok,
                      acc zy_shift, acc mu, acc* weight_out) {
  const acc w = a / sum_t;
  *weight_out = w;
  const acc soft = w * math::log_(sum_s) - b * inv_t / sum_t;
  if (!has_target) return soft;
  if (!ok) return static_cast<acc>(NAN);
  const acc hard = math::log_(sum_1) - zy_shift;
  return mu * hard + (acc(1) - mu) * soft;
}

// Ends one row of the forward (CPU and CUDA alike): writes its row_stats from the maxima and sums, and
// returns its loss (meaningful only when the row is kept). `zs` is the row's student logits.
template <typename scalar_t, typename acc>
KDOPS_VEC_HD acc finish_row(const scalar_t* zs, const int64_t* target, int64_t row, int64_t classes, acc ms,
                            acc mt, acc inv_t, acc sum_s, acc sum_t, acc sum_1, acc a, acc b, acc mu, acc* st) {
  const bool has_target = target != nullptr;
  const int64_t label = has_target ? target[row] : 0;
  const bool ok = !has_target || label_ok(label, classes);
  const acc zy_shift = has_target && ok ? static_cast<acc>(zs[label]) - ms : acc(0);
  const acc loss = row_loss<acc>(inv_t, sum_s, sum_t, sum_1, a, b, has_target, ok, zy_shift, mu, &st[kWeight]);
  st[kMaxS] = ms;
  st[kLogSumS] = math::log_(sum_s);
  st[kMaxT] = mt;
  st[kLogSumT] = math::log_(sum_t);
  st[kLogSum1] = math::log_(sum_1);
  return loss;
}

// dL/dz_s[i, j] / coef for a kept row with a valid label (or no target). The row statistics come as
// plain scalars (a struct argument is privatised per lane by GCC), and the two switches are template
// parameters so the CPU loop body has no branch: both keep a `#pragma omp simd` loop vectorised.
template <typename acc, bool kHasTarget, bool kUnitTemperature>
KDOPS_VEC_HD acc grad_element(acc zs, acc zt, acc w_j, acc max_s, acc log_sum_s, acc max_t, acc log_sum_t,
                              acc log_sum_1, acc weight, acc inv_t, bool is_label, acc mu) {
  const acc ps = math::exp_<acc>((zs - max_s) * inv_t - log_sum_s);
  const acc pt = math::exp_<acc>((zt - max_t) * inv_t - log_sum_t);
  const acc soft = inv_t * (ps * weight - w_j * pt);
  if (!kHasTarget) return soft;
  // At temperature 1 softmax(z_s) is P_s: no third exp.
  const acc p1 = kUnitTemperature ? ps : math::exp_<acc>(zs - max_s - log_sum_1);
  return (acc(1) - mu) * soft + mu * (p1 - (is_label ? acc(1) : acc(0)));
}

// The same with the switches decided at run time (the CUDA kernel, one element per thread).
template <typename acc>
KDOPS_VEC_HD acc grad_element(acc zs, acc zt, acc w_j, acc max_s, acc log_sum_s, acc max_t, acc log_sum_t,
                              acc log_sum_1, acc weight, acc inv_t, bool has_target, bool is_label, acc mu) {
  if (!has_target)
    return grad_element<acc, false, false>(zs, zt, w_j, max_s, log_sum_s, max_t, log_sum_t, log_sum_1, weight, inv_t,
                                           is_label, mu);
  if (inv_t == acc(1))
    return grad_element<acc, true, true>(zs, zt, w_j, max_s, log_sum_s, max_t, log_sum_t, log_sum_1, weight, inv_t,
                                         is_label, mu);
  return grad_element<acc, true, false>(zs, zt, w_j, max_s, log_sum_s, max_t, log_sum_t, log_sum_1, weight, inv_t,
                                        is_label, mu);
}

}  // namespace soft_ce
}  // namespace kdops
