// Per-element math of the GcBlock context pooling (docs/math.md §4), one source for CPU and CUDA.
#pragma once
#include "kdops/common.h"

namespace kdops {
namespace gc {

// Gradient of the softmax logit at pixel j: dl_j = p_j * (u_j - ubar), where u_j = sum_c g_c F[c, j]
// and ubar = sum_j p_j u_j = sum_c g_c context_c (so it needs no extra pass over F).
template <typename acc>
KDOPS_HD acc logit_grad(acc p, acc u, acc ubar) {
  return p * (u - ubar);
}

// dF[c, j] = p_j g_c (through the weighted sum) + w_c dl_j (through the logits).
template <typename acc, typename scalar_t>
KDOPS_HD scalar_t grad_feat(acc p, acc g_c, acc w_c, acc dl) {
  return static_cast<scalar_t>(p * g_c + w_c * dl);
}

}  // namespace gc
}  // namespace kdops
