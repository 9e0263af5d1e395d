// Per-element math of the FGD focal loss (docs/math.md §3), one source for CPU and CUDA.
#pragma once
#include "kdops/math/attention_masks.h"

namespace kdops {
namespace focal {

// Gradient of |a_s - a_t| / N with respect to a_s (sign(0) = 0).
template <typename acc>
KDOPS_HD acc l1_grad(acc a_s, acc a_t, acc inv_n) {
  return attention::sign(a_s - a_t) * inv_n;
}

// dL/dS at one element: the feature term, pixel_weight * channel_weight * (S - T) with
// pixel_weight = 2/N * (c_fg * M_fg + c_bg * M_bg) * A_S^t and channel_weight = A_C^t, plus the
// attention term sign(S) * (pixel_att + channel_att), both already scaled by the loss weights.
template <typename acc, typename scalar_t>
KDOPS_HD scalar_t grad_student(scalar_t s, scalar_t t, acc pixel_weight, acc channel_weight, acc pixel_att,
                               acc channel_att) {
  const acc sv = static_cast<acc>(s);
  return static_cast<scalar_t>(pixel_weight * channel_weight * (sv - static_cast<acc>(t)) +
                               attention::sign(sv) * (pixel_att + channel_att));
}

}  // namespace focal
}  // namespace kdops
