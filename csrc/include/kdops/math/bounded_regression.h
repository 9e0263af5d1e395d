// Per-row math of the teacher-bounded L2 loss (docs/math.md §7), one source for CPU and CUDA.
// e_s = ||r_s - y||^2, e_t = ||r_t - y||^2; the row counts when e_s + margin > e_t (strictly: at the
// kink the row is inactive, so its gradient there is 0). A row whose e_s or e_t is NaN is neither active
// nor bounded: its term and its gradient are NaN, so a NaN teacher poisons the loss instead of being dropped,
// unless the row's weight is 0: then its term and its gradient are exactly 0 (`weighted`, docs/math.md §0).
#pragma once
#include "kdops/common.h"
#include "kdops/math/transcendental.h"
#include "kdops/math/weighted.h"

namespace kdops {
namespace bounded {

template <typename scalar_t, typename acc>
KDOPS_VEC_HD void row_errors(const scalar_t* rs, const scalar_t* rt, const scalar_t* y, int64_t D, acc* e_s, acc* e_t) {
  acc es = 0, et = 0;
  for (int64_t k = 0; k < D; ++k) {
    const acc yk = static_cast<acc>(y[k]);
    const acc ds = static_cast<acc>(rs[k]) - yk, dt = static_cast<acc>(rt[k]) - yk;
    es += ds * ds;
    et += dt * dt;
  }
  *e_s = es;
  *e_t = et;
}

template <typename acc>
KDOPS_VEC_HD bool active(acc e_s, acc e_t, acc margin) {
  return e_s + margin > e_t;
}

// The term (loss or gradient factor) of a row that is not active: 0 when it is bounded
// (e_s + margin <= e_t), NaN when the comparison is unordered (e_s or e_t NaN).
template <typename acc>
KDOPS_VEC_HD acc inactive_term(acc e_s, acc e_t, acc margin) {
  const acc lhs = e_s + margin;
  return lhs <= e_t ? acc(0) : lhs - e_t;
}

// The weight a row's gradient sees: 0 for a bounded row (its term is the constant 0, so its gradient is exactly
// 0 whatever its weight, NaN and Inf included, as autograd gives through the reference), else the row's weight.
template <typename acc>
KDOPS_VEC_HD acc gradient_weight(acc w, acc e_s, acc e_t, acc margin) {
  return e_s + margin <= e_t ? acc(0) : w;
}

// A row's weight (1 without weights) and whether it counts in Z.
template <typename acc>
KDOPS_VEC_HD acc row_weight(const acc* weight, int64_t row) {
  return weight == nullptr ? acc(1) : weight[row];
}
template <typename acc>
KDOPS_VEC_HD acc row_counts(const acc* weight, int64_t row) {
  return weight == nullptr || weight[row] > acc(0) ? acc(1) : acc(0);
}

}  // namespace bounded
}  // namespace kdops
