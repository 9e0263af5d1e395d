// Per-element math of the FGD attention masks (docs/math.md §1), one source for CPU and CUDA.
#pragma once
#include "kdops/common.h"

namespace kdops {
namespace attention {

template <typename T>
KDOPS_HD T sign(T x) {
  return static_cast<T>((x > T(0)) - (x < T(0)));  // sign(0) = 0, as docs/math.md §3 asks
}

// Gradient of |F| feeding both means: dF = sign(F) * (g_m[n,hw] / C + g_k[n,c] / HW).
// The callers pre-scale g_m by 1/C and g_k by 1/HW, so the per-element work is one add and one multiply.
template <typename acc, typename scalar_t>
KDOPS_HD scalar_t grad_feature(scalar_t f, acc gm_over_c, acc gk_over_hw) {
  return static_cast<scalar_t>(sign(static_cast<acc>(f)) * (gm_over_c + gk_over_hw));
}

// Softmax backward scaled as the masks are (A = size * softmax(x / temp)):
// dL/dx_i = (1/temp) * A_i * (g_i - sum_j (A_j / size) * g_j).
template <typename acc>
KDOPS_HD acc scaled_softmax_grad(acc a_i, acc g_i, acc weighted_mean_g, acc inv_temp) {
  return inv_temp * a_i * (g_i - weighted_mean_g);
}

}  // namespace attention
}  // namespace kdops
