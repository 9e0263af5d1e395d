// Per-row math of channel-wise distillation (docs/math.md §6), one source for CPU and CUDA.
// For one (n, c) row with maxima m_s, m_t over the pixels:
//   sum_s = sum e^{(s - m_s)/tau}, sum_t = sum e^{(t - m_t)/tau}, A = sum e^{(t - m_t)/tau} ((t - m_t) - (s - m_s))
//   KL = A / (tau sum_t) + log sum_s - log sum_t     (shifted terms: no cancellation for large features)
// row_stats = (m_s, log sum_s, m_t, log sum_t); dL/dS = grad * tau / (N C) * (P_s - P_t).
#pragma once
#include "kdops/common.h"
#include "kdops/math/transcendental.h"

namespace kdops {
namespace cwd {

constexpr int kStats = 4;
enum Stat : int { kMaxS = 0, kLogSumS, kMaxT, kLogSumT };

template <typename acc>
KDOPS_VEC_HD acc row_kl(acc inv_tau, acc sum_s, acc sum_t, acc a) {
  return a * inv_tau / sum_t + math::log_(sum_s) - math::log_(sum_t);
}

// The row statistics come as plain scalars: a struct argument is privatised per lane by GCC and
// stops the loop from vectorising.
template <typename acc>
KDOPS_VEC_HD acc grad_element(acc s, acc t, acc max_s, acc log_sum_s, acc max_t, acc log_sum_t, acc inv_tau) {
  return math::exp_<acc>((s - max_s) * inv_tau - log_sum_s) - math::exp_<acc>((t - max_t) * inv_tau - log_sum_t);
}

}  // namespace cwd
}  // namespace kdops
