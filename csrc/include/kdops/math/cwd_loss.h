// Per-row math of channel-wise distillation (docs/math.md §6), one source for CPU and CUDA.
// For one (n, c) row with maxima m_s, m_t over the pixels:
//   sum_s = sum e^{(s - m_s)/tau}, sum_t = sum e^{(t - m_t)/tau}, A = sum e^{(t - m_t)/tau} ((t - m_t) - (s - m_s))
//   KL = A / (tau sum_t) + log sum_s - log sum_t     (shifted terms: no cancellation for large features)
// That form cancels when tau is large against the row's spread (KL is then second order in 1/tau: float32 was
// 7% off at tau = 1e3 and NaN at 1e20). A row is "near" when every |z_j| / tau <= kNearBound, with
//   z_j = (ds_j - dt_j) - (ds_0 - dt_0),  ds = s - m_s, dt = t - m_t,
// and then, with p_t the teacher softmax, M1 = sum p_t z, M2 = sum p_t z^2 r(z / tau), r(y) = (e^y - 1 - y) / y^2,
//   tau^2 KL = M2 - v^2 h(u),   v = M1 + M2 / tau,  u = v / tau,  h(u) = (u - log1p(u)) / u^2,
//   tau (P_s - P_t) = P_t w E(w / tau),   w = z - c,  c = v log1p(u) / u,  E(x) = (e^x - 1) / x,
// exact identities evaluated without cancellation, overflow or underflow for any tau (r, h, log1p(u)/u and E
// are short series: |z / tau| <= 1/8, |u| < 0.14, |w / tau| < 0.28).
// row_stats = (m_s, log sum_s, m_t, log sum_t, near, c); dL/dS = grad / (N C) * tau (P_s - P_t).
#pragma once
#include "kdops/common.h"
#include "kdops/layout.h"
#include "kdops/math/transcendental.h"

namespace kdops {
namespace cwd {

constexpr double kNearBound = 0.125;  // the bound on |z| / tau of a near row

template <typename acc>
KDOPS_VEC_HD acc row_kl(acc inv_tau, acc sum_s, acc sum_t, acc a) {
  return a * inv_tau / sum_t + math::log_(sum_s) - math::log_(sum_t);
}

// r(y) = (e^y - 1 - y) / y^2 = sum_k y^k / (k + 2)!, to y^10 (|y| <= 1/8: error < 1e-17).
template <typename acc>
KDOPS_VEC_HD acc expm1_gap_ratio(acc y) {
  acc p = 1;
  for (int k = 12; k >= 3; --k) p = acc(1) + y * p * (acc(1) / acc(k));
  return acc(0.5) * p;
}

// E(x) = (e^x - 1) / x = sum_k x^k / (k + 1)!, to x^13 (|x| < 0.28: error < 1e-18).
template <typename acc>
KDOPS_VEC_HD acc expm1_ratio(acc x) {
  acc p = 1;
  for (int k = 14; k >= 2; --k) p = acc(1) + x * p * (acc(1) / acc(k));
  return p;
}

// h(u) = (u - log1p(u)) / u^2 = sum_k (-u)^k / (k + 2) and log1p(u) / u = sum_k (-u)^k / (k + 1), to u^23
// (|u| < 0.14: error < 1e-20). Per row, not per element.
template <typename acc>
KDOPS_VEC_HD acc log1p_series(acc u, int first) {
  acc p = 0;
  for (int k = 23; k >= 0; --k) p = acc(1) / acc(k + first) - u * p;
  return p;
}

// tau^2 KL of one row from its sums; writes the row's near flag and shift c (0 for a far row).
template <typename acc>
KDOPS_VEC_HD acc row_loss(acc tau, acc inv_tau, acc sum_s, acc sum_t, acc a, acc m1, acc m2, acc zmax, acc* near,
                          acc* shift) {
  if (zmax * inv_tau <= acc(kNearBound)) {
    const acc M1 = m1 / sum_t, M2 = m2 / sum_t, v = M1 + M2 * inv_tau, u = v * inv_tau;
    *near = 1;
    *shift = v * log1p_series<acc>(u, 1);
    return M2 - v * v * log1p_series<acc>(u, 2);
  }
  *near = 0;
  *shift = 0;
  return row_kl<acc>(inv_tau, sum_s, sum_t, a) * tau * tau;
}

// tau (P_s - P_t) of a near row's element, z as in the forward.
template <typename acc>
KDOPS_VEC_HD acc near_grad_element(acc z, acc t, acc max_t, acc log_sum_t, acc shift, acc inv_tau) {
  const acc w = z - shift;
  return math::exp_<acc>((t - max_t) * inv_tau - log_sum_t) * w * expm1_ratio<acc>(w * inv_tau);
}

// P_s - P_t of a far row's element. The row statistics come as plain scalars: a struct argument is privatised
// per lane by GCC and stops the loop from vectorising.
template <typename acc>
KDOPS_VEC_HD acc grad_element(acc s, acc t, acc max_s, acc log_sum_s, acc max_t, acc log_sum_t, acc inv_tau) {
  return math::exp_<acc>((s - max_s) * inv_tau - log_sum_s) - math::exp_<acc>((t - max_t) * inv_tau - log_sum_t);
}

}  // namespace cwd
}  // namespace kdops
