// Per-row math of channel-wise distillation (SPEC §6), one source for CPU and CUDA.
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
KDOPS_HD acc row_kl(acc inv_tau, acc sum_s, acc sum_t, acc a) {
  return a * inv_tau / sum_t + log(sum_s) - log(sum_t);
}

template <typename acc>
KDOPS_HD acc grad_element(acc s, acc t, const acc* st, acc inv_tau) {
  return math::exp_<acc>((s - st[kMaxS]) * inv_tau - st[kLogSumS]) -
         math::exp_<acc>((t - st[kMaxT]) * inv_tau - st[kLogSumT]);
}

}  // namespace cwd
}  // namespace kdops
