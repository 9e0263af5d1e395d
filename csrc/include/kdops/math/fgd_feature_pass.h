// Per-element gradient of one FGD level with respect to S (docs/math.md §3-§4), all three parts in one place.
#pragma once
#include "kdops/math/fgd_focal_loss.h"
#include "kdops/math/gc_context.h"

namespace kdops {
namespace feature_pass {

// dL/dS = the focal term (focal::grad_student), the relation term diff_coef * (S - T) + channel_shift
// (diff_coef = 2 dL/d diff_sq, channel_shift = dL/d diff_sum[n, c]) and the student GcBlock term
// (gc::grad_feat: p_j g_c + w_c dl_j).
template <typename acc, typename scalar_t>
KDOPS_HD scalar_t grad_student(scalar_t s, scalar_t t, acc mask_coef, acc spatial_weight, acc channel_weight,
                               acc pixel_att, acc channel_att, acc diff_coef, acc channel_shift, acc p, acc g_c,
                               acc w_c, acc dl) {
  const acc sv = static_cast<acc>(s), tv = static_cast<acc>(t);
  return static_cast<scalar_t>(focal::grad_student<acc, acc>(sv, tv, mask_coef, spatial_weight, channel_weight,
                                                              pixel_att, channel_att) +
                               diff_coef * (sv - tv) + channel_shift + gc::grad_feat<acc, acc>(p, g_c, w_c, dl));
}

}  // namespace feature_pass
}  // namespace kdops
