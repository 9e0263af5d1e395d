// A weight times a term, where a weight of 0 gives exactly 0 whatever the term holds (docs/math.md §0:
// rows and pixels of weight 0 do not exist for an op). A select, not a product: 0 * inf and 0 * NaN are
// NaN, and a row a caller marked as unused (weight 0) may hold anything. One spelling for CPU and CUDA.
#pragma once
#include "kdops/math/transcendental.h"  // KDOPS_VEC_HD

namespace kdops {

template <typename acc>
KDOPS_VEC_HD acc weighted(acc weight, acc term) {
  return weight == acc(0) ? acc(0) : weight * term;
}

}  // namespace kdops
