// Per-element math of masked feature imitation (docs/math.md §5), one source for CPU and CUDA.
#pragma once
#include "kdops/common.h"
#include "kdops/layout.h"
#include "kdops/math/weighted.h"  // a pixel of mask 0 adds exactly 0 (docs/math.md §0)

namespace kdops {
namespace imitation {

// rho(d): the penalty on d = S - T.
template <typename acc>
KDOPS_HD acc rho(acc d, int loss) {
  return loss == kMSE ? d * d : (d < acc(0) ? -d : d);
}

// rho'(d); |.| has derivative sign(d) with sign(0) = 0.
template <typename acc>
KDOPS_HD acc rho_grad(acc d, int loss) {
  return loss == kMSE ? acc(2) * d : static_cast<acc>((d > acc(0)) - (d < acc(0)));
}

// Z for each normalisation: N, the element count, or C * sum(M) (0/0 = 0 is handled by safe_div).
template <typename acc>
KDOPS_HD acc safe_div(acc num, acc den) {
  return den == acc(0) ? acc(0) : num / den;
}

}  // namespace imitation
}  // namespace kdops
