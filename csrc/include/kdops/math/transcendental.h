// exp / log1p / log used by the loss math, one spelling for CPU and CUDA.
// On the CPU, libm's float expf/log1pf stop `#pragma omp simd` loops from vectorising (glibc only
// offers vector variants under -ffast-math), so float gets branch-free polynomial versions
// (a few ulp, NaN propagates, exp saturates to 0 below -87.3 and to +inf above 88.7). Device code
// and double use the library functions.
#pragma once
#include <cmath>
#include <cstdint>
#include <bit>

#include "kdops/common.h"

// Per-element helpers are force-inlined on the host: GCC's heuristics leave some calls in the
// `#pragma omp simd` loop bodies, and a call there stops the loop from vectorising.
#if defined(__CUDACC__)
#define KDOPS_VEC_HD KDOPS_HD
#else
#define KDOPS_VEC_HD inline __attribute__((always_inline))
#endif

namespace kdops {
namespace math {

#if !defined(__CUDA_ARCH__)
// Cephes-style expf: exp(x) = 2^n * exp(r), |r| <= ln2/2, degree-6 polynomial for exp(r).
// Written without data-dependent branches (clamps map to maxss/minss, rounding uses the 1.5 * 2^23
// trick) so the compiler keeps the whole loop in vector registers.
KDOPS_VEC_HD float exp_poly(float x) {
  float xc = x < -87.3f ? -87.3f : x;  // NaN fails both tests and flows through
  xc = xc > 88.7f ? 88.7f : xc;
  const float round_magic = 12582912.f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float nf = (xc * 1.44269504088896341f + round_magic) - round_magic;
  const int32_t n = static_cast<int32_t>(nf);
  float r = xc - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const float scale = std::bit_cast<float>((n + 127) << 23);
  const float y = p * scale;
  // Below the clamp exp underflows to 0 (exp(-inf) = 0 exactly); above it overflows to inf.
  const float low = x < -87.3f ? 0.f : y;
  return x > 88.7f ? INFINITY : low;
}

// log(1 + u) for u in [0, 1] (no cancellation for tiny u): 2 atanh(f), f = u / (2 + u) <= 1/3.
KDOPS_VEC_HD float log1p_unit_poly(float u) {
  const float f = u / (2.f + u), f2 = f * f;
  float p = 1.f / 17.f;
  p = p * f2 + 1.f / 15.f;
  p = p * f2 + 1.f / 13.f;
  p = p * f2 + 1.f / 11.f;
  p = p * f2 + 1.f / 9.f;
  p = p * f2 + 1.f / 7.f;
  p = p * f2 + 1.f / 5.f;
  p = p * f2 + 1.f / 3.f;
  p = p * f2 + 1.f;
  return 2.f * f * p;
}
#endif

template <typename acc>
KDOPS_VEC_HD acc exp_(acc x) {
  return exp(x);
}

// Natural log in the accumulation type. A bare `log(float)` in a header can resolve to the double
// ::log on the host (three times slower, and a silent float -> double -> float round trip).
KDOPS_VEC_HD float log_(float x) { return logf(x); }
KDOPS_VEC_HD double log_(double x) { return log(x); }

// log(1 + u) for u in [0, 1], the only range the losses need (u = exp(-|x|)).
template <typename acc>
KDOPS_VEC_HD acc log1p_unit(acc u) {
  return log1p(u);
}

#if !defined(__CUDA_ARCH__)
template <>
KDOPS_VEC_HD float exp_<float>(float x) {
  return exp_poly(x);
}
template <>
KDOPS_VEC_HD float log1p_unit<float>(float u) {
  return log1p_unit_poly(u);
}
#endif

// log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)), finite for every finite x.
template <typename acc>
KDOPS_VEC_HD acc log_sigmoid(acc x) {
  const acc ax = x < acc(0) ? -x : x;
  return (x < acc(0) ? x : acc(0)) - log1p_unit<acc>(exp_<acc>(-ax));
}

// sigmoid(x) without overflow: 1 / (1 + e) or e / (1 + e) with e = exp(-|x|).
template <typename acc>
KDOPS_VEC_HD acc sigmoid(acc x) {
  const acc e = exp_<acc>(x < acc(0) ? x : -x);
  const acc r = acc(1) / (acc(1) + e);
  return x < acc(0) ? e * r : r;
}

}  // namespace math
}  // namespace kdops
