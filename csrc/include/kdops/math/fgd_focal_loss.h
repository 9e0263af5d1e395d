// Per-element math of the FGD focal loss (docs/math.md §3), one source for CPU and CUDA.
// A weight of 0 adds exactly 0 (docs/math.md §0): a pixel where fg (bg) is 0 adds nothing to L_fg (L_bg)
// and a term whose weight is 0 adds nothing to the loss, whatever S holds there.
#pragma once
#include "kdops/math/attention_masks.h"
#include "kdops/math/weighted.h"

namespace kdops {
namespace focal {

// Gradient of |a_s - a_t| / N with respect to a_s (sign(0) = 0).
template <typename acc>
KDOPS_HD acc l1_grad(acc a_s, acc a_t, acc inv_n) {
  return attention::sign(a_s - a_t) * inv_n;
}

// loss = alpha * L_fg + beta * L_bg + gamma * L_att.
template <typename acc>
KDOPS_HD acc weighted_loss(acc alpha, acc l_fg, acc beta, acc l_bg, acc gamma, acc l_att) {
  return weighted<acc>(alpha, l_fg) + weighted<acc>(beta, l_bg) + weighted<acc>(gamma, l_att);
}

// The per-pixel mask coefficient of dL/dS's feature term: 2/N * (c_fg * M_fg + c_bg * M_bg).
template <typename acc>
KDOPS_HD acc mask_coef(acc two_over_n, acc c_fg, acc fg, acc c_bg, acc bg) {
  return two_over_n * (c_fg * fg + c_bg * bg);
}

// dL/dS at one element: the feature term, mask_coef * A_S^t * A_C^t * (S - T) (exactly 0 where mask_coef
// is 0), plus the attention term sign(S) * (pixel_att + channel_att), both already scaled by the loss weights.
template <typename acc, typename scalar_t>
KDOPS_HD scalar_t grad_student(scalar_t s, scalar_t t, acc mask_coef, acc spatial_weight, acc channel_weight,
                               acc pixel_att, acc channel_att) {
  const acc sv = static_cast<acc>(s);
  return static_cast<scalar_t>(weighted<acc>(mask_coef, spatial_weight * channel_weight * (sv - static_cast<acc>(t))) +
                               attention::sign(sv) * (pixel_att + channel_att));
}

}  // namespace focal
}  // namespace kdops
