// Per-element math of quality-focal KD (docs/math.md §12), one source for CPU and CUDA. With s = sigmoid(z_s),
// p = sigmoid(z_t), d = s - p:
//   f  = bce * |d|^beta,      bce = max(z_s, 0) - p z_s + log(1 + exp(-|z_s|))
//   df = d |d|^beta + beta * bce * s (1 - s) * sign(d) |d|^(beta - 1)     (0 at d = 0: sign(0) = 0)
// s (1 - s) = e / (1 + e)^2 with e = exp(-|z_s|): it does not round to 0 where s rounds to 1.
#pragma once
#include <type_traits>

#include "kdops/common.h"
#include "kdops/layout.h"  // qfkd::Normalize, the codes of `normalize`
#include "kdops/math/transcendental.h"

namespace kdops {
namespace qfkd {

// |d|^beta without a general pow for the official beta = 1 and GFL's beta = 2 (pow keeps a CPU loop scalar).
enum class Beta : int { kOne, kTwo, kAny };

// f(kind) with kind a compile-time Beta for `beta`.
template <typename F>
void with_beta(double beta, const F& f) {
  if (beta == 1.0) {
    f(std::integral_constant<Beta, Beta::kOne>{});
  } else if (beta == 2.0) {
    f(std::integral_constant<Beta, Beta::kTwo>{});
  } else {
    f(std::integral_constant<Beta, Beta::kAny>{});
  }
}

// pow in the accumulation type (a bare pow(float, float) may resolve to the double one on the host).
KDOPS_VEC_HD float pow_(float x, float y) { return powf(x, y); }
KDOPS_VEC_HD double pow_(double x, double y) { return pow(x, y); }

// What both directions need of one element.
template <typename acc>
struct Terms {
  acc bce, d, slope;  // slope = ds/dz_s = s (1 - s)
};

template <typename acc>
KDOPS_VEC_HD Terms<acc> terms(acc zs, acc zt) {
  const acc e = math::exp_<acc>(zs < acc(0) ? zs : -zs);  // exp(-|z_s|)
  const acc r = acc(1) / (acc(1) + e);
  const acc s = zs < acc(0) ? e * r : r;
  const acc p = math::sigmoid<acc>(zt);
  return {(zs > acc(0) ? zs : acc(0)) - p * zs + math::log1p_unit<acc>(e), s - p, e * r * r};
}

template <Beta kB, typename acc>
KDOPS_VEC_HD acc loss(acc zs, acc zt, acc beta) {
  const Terms<acc> t = terms<acc>(zs, zt);
  const acc a = t.d < acc(0) ? -t.d : t.d;
  if (kB == Beta::kOne) return t.bce * a;
  if (kB == Beta::kTwo) return t.bce * (a * a);
  return t.bce * pow_(a, beta);  // pow(0, 0) = 1
}

// df/dz_s of one element.
template <Beta kB, typename acc>
KDOPS_VEC_HD acc grad(acc zs, acc zt, acc beta) {
  const Terms<acc> t = terms<acc>(zs, zt);
  const acc a = t.d < acc(0) ? -t.d : t.d;
  const acc sign = t.d > acc(0) ? acc(1) : (t.d < acc(0) ? acc(-1) : acc(0));
  if (kB == Beta::kOne) return t.d * a + t.bce * t.slope * sign;
  if (kB == Beta::kTwo) return t.d * (a * a) + acc(2) * t.bce * t.slope * t.d;
  // sign(d) |d|^(beta - 1) (|d|^2 + beta bce s (1 - s)); |d| = 0 is replaced by 1 where sign(d) = 0 zeroes it
  const acc power = pow_(a == acc(0) ? acc(1) : a, beta - acc(1));
  return sign * power * (a * a + beta * t.bce * t.slope);
}

}  // namespace qfkd
}  // namespace kdops
