// Per-anchor math of the binary weighted soft cross-entropy (docs/math.md §7), one source for CPU and CUDA.
// x = z_s / T, p_t = sigmoid(z_t / T); log sigmoid(-x) = log sigmoid(x) - x, so one log per anchor,
// and every term stays finite for any finite logit.
#pragma once
#include "kdops/common.h"
#include "kdops/math/transcendental.h"

namespace kdops {
namespace soft_bce {

KDOPS_VEC_HD bool kept(const int64_t* target, int64_t i, int64_t ignore_index) {
  return target == nullptr || target[i] != ignore_index;
}
KDOPS_VEC_HD bool label_ok(int64_t label) { return label == 0 || label == 1; }

struct Params {
  double pos_weight, neg_weight, temperature, mu;
};

template <typename acc>
struct Coeffs {
  acc wp, wn, inv_t, mu;
  bool unit_temperature;
  explicit Coeffs(const Params& p)
      : wp(static_cast<acc>(p.pos_weight)), wn(static_cast<acc>(p.neg_weight)),
        inv_t(acc(1) / static_cast<acc>(p.temperature)), mu(static_cast<acc>(p.mu)),
        unit_temperature(p.temperature == 1.0) {}
};

// Loss of one kept anchor; `label` < 0 means no target (int, not int64: it stays in vector registers).
// The coefficients come as plain scalars (wp, wn, inv_t, mu, unit_t): a struct argument is privatised
// per lane by GCC and stops a CPU loop from vectorising.

template <typename acc>
KDOPS_VEC_HD acc loss(acc zs, acc zt, int label, acc wp, acc wn, acc inv_t, acc mu, bool unit_t) {
  const acc x = zs * inv_t, pt = math::sigmoid<acc>(zt * inv_t);
  const acc ls = math::log_sigmoid<acc>(x);
  const acc soft = -(wp * pt * ls + wn * (acc(1) - pt) * (ls - x));
  if (label < 0) return soft;
  const acc y = label == 1 ? acc(1) : acc(0);  // label is 0 or 1 here
  const acc l1 = unit_t ? ls : math::log_sigmoid<acc>(zs);
  const acc hard = -(y * l1 + (acc(1) - y) * (l1 - zs));
  return mu * hard + (acc(1) - mu) * soft;
}

// dLoss/dz_s of one kept anchor; `label` < 0 means no target.
template <typename acc>
KDOPS_VEC_HD acc grad(acc zs, acc zt, int label, acc wp, acc wn, acc inv_t, acc mu, bool unit_t) {
  const acc s = math::sigmoid<acc>(zs * inv_t), pt = math::sigmoid<acc>(zt * inv_t);
  const acc soft = inv_t * (wn * (acc(1) - pt) * s - wp * pt * (acc(1) - s));
  if (label < 0) return soft;
  const acc s1 = unit_t ? s : math::sigmoid<acc>(zs);
  return (acc(1) - mu) * soft + mu * (s1 - (label == 1 ? acc(1) : acc(0)));
}

// Loss (or gradient / coef) of anchor i including the ignore and bad-label rules.
template <typename acc, bool kGrad>
KDOPS_VEC_HD acc element(acc zs, acc zt, const int64_t* target, int64_t i, int64_t ignore_index, Coeffs<acc> k) {
  const int64_t label = target == nullptr ? -1 : target[i];
  if (label == ignore_index && target != nullptr) return acc(0);
  if (target != nullptr && !label_ok(label)) return static_cast<acc>(NAN);
  const int y = static_cast<int>(label);  // -1 (no target), 0 or 1 here
  return kGrad ? grad<acc>(zs, zt, y, k.wp, k.wn, k.inv_t, k.mu, k.unit_temperature)
               : loss<acc>(zs, zt, y, k.wp, k.wn, k.inv_t, k.mu, k.unit_temperature);
}

}  // namespace soft_bce
}  // namespace kdops
