// Per-channel math of PKD (docs/math.md §6), one source for CPU and CUDA. Each channel holds M = N*H*W values;
// x' = (x - mean_x) / a_x with a_x = std_x + 1e-6 (unbiased std), D_c = sum (x' - y')^2, and
// L = sum_c D_c / (2 C M). Three passes per channel (means, centred squares, D) keep float32 exact
// enough where S and T nearly agree (no E[x^2] - E[x]^2 cancellation).
// Backward, with V_x = sum (x - mean_x)^2 = (M - 1) std_x^2:
//   sum x'^2 = V_x / a_x^2, sum x'y' = (sum x'^2 + sum y'^2 - D_c) / 2,
//   dL/dx = grad / (C M) * ((x' - y') / a_x - x' * (sum x'^2 - sum x'y') / ((M - 1) std_x)),
// the last term taken as 0 for a constant channel (std_x = 0, where x' = 0).
#pragma once
#include "kdops/common.h"
#include "kdops/layout.h"
#include "kdops/math/transcendental.h"

namespace kdops {
namespace pkd {

constexpr double kEps = 1e-6;

// std from the centred sum of squares (unbiased; M = 1 gives NaN like torch.std).
template <typename acc>
KDOPS_VEC_HD acc unbiased_std(acc centred_squares, int64_t m) {
  return sqrt(centred_squares / static_cast<acc>(m - 1));
}

// Per-channel coefficients of the student-side backward: g = coef * ((x' - y') / a_x - x' * corr).
template <typename acc>
struct Backward {
  acc mean_x, inv_ax, mean_y, inv_ay, corr;
};

template <typename acc>
KDOPS_VEC_HD Backward<acc> backward_coeffs(const acc* st, int64_t m) {
  const acc ax = st[kStdS] + acc(kEps), ay = st[kStdT] + acc(kEps);
  const acc vx = static_cast<acc>(m - 1) * st[kStdS] * st[kStdS], vy = static_cast<acc>(m - 1) * st[kStdT] * st[kStdT];
  const acc sxx = vx / (ax * ax), syy = vy / (ay * ay);
  const acc sxy = (sxx + syy - st[kSquaredDiff]) / acc(2);
  const acc corr = st[kStdS] == acc(0) ? acc(0) : (sxx - sxy) / (static_cast<acc>(m - 1) * st[kStdS]);
  return {st[kMeanS], acc(1) / ax, st[kMeanT], acc(1) / ay, corr};
}

template <typename acc>
KDOPS_VEC_HD acc grad_element(acc x, acc y, const Backward<acc>& b) {
  const acc xs = (x - b.mean_x) * b.inv_ax, ys = (y - b.mean_y) * b.inv_ay;
  return (xs - ys) * b.inv_ax - xs * b.corr;
}

}  // namespace pkd
}  // namespace kdops
