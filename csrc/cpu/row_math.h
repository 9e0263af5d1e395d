// Small vector loops shared by the CPU row kernels (inlined into each caller's ISA clone).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kdops/common.h"
#include "kdops/math/transcendental.h"

namespace kdops {
namespace cpu {

// The maxima of two rows x[0, n) and y[0, n), in the accumulation type.
template <typename acc, typename T>
KDOPS_VEC_HD void row_maxima(const T* x, const T* y, int64_t n, acc& max_x, acc& max_y) {
  acc mx = -INFINITY, my = -INFINITY;
#pragma omp simd reduction(max : mx, my)
  for (int64_t j = 0; j < n; ++j) {
    mx = std::max(mx, static_cast<acc>(x[j]));
    my = std::max(my, static_cast<acc>(y[j]));
  }
  max_x = mx;
  max_y = my;
}

// sum_j v[j] * x[j] over [0, n).
template <typename acc, typename T>
KDOPS_VEC_HD acc dot(const acc* v, const T* x, int64_t n) {
  acc s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += v[j] * static_cast<acc>(x[j]);
  return s;
}

}  // namespace cpu
}  // namespace kdops
