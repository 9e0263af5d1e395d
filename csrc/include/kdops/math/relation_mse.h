// Per-element math of the FGD relation loss (docs/math.md §4), one source for CPU and CUDA.
#pragma once
#include "kdops/common.h"

namespace kdops {
namespace relation {

// r = S + delta_s - T - delta_t, with delta = delta_s - delta_t of the element's (n, c) row.
template <typename acc, typename scalar_t>
KDOPS_HD acc residual(scalar_t s, scalar_t t, acc delta) {
  return static_cast<acc>(s) - static_cast<acc>(t) + delta;
}

}  // namespace relation
}  // namespace kdops
