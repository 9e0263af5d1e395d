// Per-row math of localization distillation (docs/math.md §11), one source for CPU and CUDA. A row's
// T^2 KL, its statistics and its gradient are CWD's (math/cwd_loss.h: the same function of a row); LD
// averages it over the row's n bins, weights the row (a weight of 0 gives exactly 0, math/weighted.h;
// the kernels do not read such a row) and divides the sum by Z.
#pragma once
#include "kdops/common.h"
#include "kdops/layout.h"
#include "kdops/math/cwd_loss.h"
#include "kdops/math/weighted.h"

namespace kdops {
namespace ld {

// A row's weight (1 without weights).
template <typename acc>
KDOPS_VEC_HD acc row_weight(const acc* weight, int64_t row) {
  return weight == nullptr ? acc(1) : weight[row];
}

// Z of `normalize` from the forward's sums: 1, the number of rows (weight-0 rows included), or the sum of
// the weights.
template <typename acc>
KDOPS_HD acc normaliser(int normalize, acc rows, acc weight_sum) {
  return normalize == kSum ? acc(1) : (normalize == kMean ? rows : weight_sum);
}

// x / Z, with Z = 0 giving 0 (docs/math.md §0).
template <typename acc>
KDOPS_HD acc normalised(acc x, acc z) {
  return z == acc(0) ? acc(0) : x / z;
}

}  // namespace ld
}  // namespace kdops
