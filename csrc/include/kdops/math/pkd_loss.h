// Per-channel math of PKD (docs/math.md §6), one source for CPU and CUDA. Each channel holds M = N*H*W values;
// x' = (x - mean_x) / a_x with a_x = std_x + 1e-6 (unbiased std), D_c = sum (x' - y')^2, and
// L = sum_c D_c / (2 C M). Three passes per channel (means, centred squares, D) keep float32 exact
// enough where S and T nearly agree (no E[x^2] - E[x]^2 cancellation).
// Backward, with V_x = sum (x - mean_x)^2 = (M - 1) std_x^2:
//   sum x'^2 = V_x / a_x^2, sum x'y' = (sum x'^2 + sum y'^2 - D_c) / 2,
//   dL/dx = grad / (C M) * ((x' - y') / a_x - x' * (sum x'^2 - sum x'y') / ((M - 1) std_x)),
// the last term taken as 0 for a constant channel (std_x = 0, where x' = 0).
// No statistic overflows for finite inputs below half the accumulation type's largest value: the means sum
// x * 2^-p with 2^p >= M, the centred squares sum ((x - mean) * 2^-e)^2 with 2^e > max |x| (powers of two:
// exact scalings, so the result has the bits of the unscaled sums wherever those do not overflow), and sum x'^2
// is rebuilt as (M - 1) (std / a)^2.
#pragma once
#include "kdops/common.h"
#include "kdops/layout.h"
#include "kdops/math/transcendental.h"

namespace kdops {
namespace pkd {

constexpr double kEps = 1e-6;

// 2^-p with 2^p >= m: the means sum x * mean_scale(M) (no sum of M finite values can overflow) and divide by
// M * mean_scale(M).
template <typename acc>
KDOPS_HD acc mean_scale(int64_t m) {
  int p = 0;
  while (p < 62 && (int64_t(1) << p) < m) ++p;
  return ldexp(acc(1), -p);
}

// 2^-e with 2^e > amax (1 when amax is 0; e >= -125 so the scale stays finite in float32): the centred squares
// sum ((x - mean) * scale)^2 <= 4 per value, and the std divides the scale out again.
template <typename acc>
KDOPS_HD acc unit_scale(acc amax) {
  int e = 0;
  frexp(amax, &e);
  return ldexp(acc(1), -(e < -125 ? -125 : e));
}

// std from the scaled centred sum of squares (unbiased; M = 1 gives NaN like torch.std).
template <typename acc>
KDOPS_VEC_HD acc unbiased_std(acc scaled_centred_squares, int64_t m, acc scale) {
  return sqrt(scaled_centred_squares / static_cast<acc>(m - 1)) / scale;
}

// Per-channel coefficients of the student-side backward: g = coef * ((x' - y') / a_x - x' * corr).
template <typename acc>
struct Backward {
  acc mean_x, inv_ax, mean_y, inv_ay, corr;
};

template <typename acc>
KDOPS_VEC_HD Backward<acc> backward_coeffs(const acc* st, int64_t m) {
  const acc ax = st[kStdS] + acc(kEps), ay = st[kStdT] + acc(kEps);
  const acc rx = st[kStdS] / ax, ry = st[kStdT] / ay;  // <= 1: (M - 1) std^2 itself can overflow
  const acc sxx = static_cast<acc>(m - 1) * rx * rx, syy = static_cast<acc>(m - 1) * ry * ry;
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
