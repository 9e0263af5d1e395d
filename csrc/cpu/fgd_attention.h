// The attention part of FGD on the CPU (docs/math.md §1, §3), shared by the focal-loss and feature-pass kernels:
// once the per-pixel and per-channel sums of |S| and |T| of one image are known, the masks, the
// attention loss and its gradient coefficients live in (H*W) and (C) vectors.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "blocked_sum.h"
#include "kdops/math/fgd_focal_loss.h"

namespace kdops {
namespace cpu {

// out[i] = len * softmax(x[i] * scale) over one row, in place allowed.
template <typename acc>
void scaled_softmax_row(const acc* x, acc* out, int64_t len, acc scale) {
  acc mx = -std::numeric_limits<acc>::infinity();
  for (int64_t i = 0; i < len; ++i) mx = std::max(mx, x[i]);
  const double total = blocked_sum(len, [&](int64_t i0, int64_t i1) {
    acc block = 0;
    for (int64_t i = i0; i < i1; ++i) {
      out[i] = std::exp((x[i] - mx) * scale);  // shifted before scaled: x * scale - max may be one FMA
      block += out[i];
    }
    return block;
  });
  const acc factor = static_cast<acc>(static_cast<double>(len) / total);
  for (int64_t i = 0; i < len; ++i) out[i] *= factor;
}

// mean_i a[i] * g[i] over one row: the softmax backward's weighted mean.
template <typename acc, typename G>
acc weighted_mean(const acc* a, const G& g, int64_t len) {
  const double total = blocked_sum(len, [&](int64_t i0, int64_t i1) {
    acc block = 0;
    for (int64_t i = i0; i < i1; ++i) block += a[i] * g(i);
    return block;
  });
  return static_cast<acc>(total / static_cast<double>(len));
}

// Returns sum |a_s - a_t| over one row and writes out = d(sum |a_s - a_t| / N)/d(logits) * post_scale,
// through the scaled softmax a_s = len * softmax(logits / temp).
template <typename acc>
double attention_l1_row(const acc* a_s, const acc* a_t, acc* out, int64_t len, acc inv_n, acc inv_temp,
                        acc post_scale) {
  const double l1 = blocked_sum(len, [&](int64_t i0, int64_t i1) {
    acc block = 0;
    for (int64_t i = i0; i < i1; ++i) block += std::abs(a_s[i] - a_t[i]);
    return block;
  });
  const acc weighted = weighted_mean<acc>(a_s, [&](int64_t i) { return focal::l1_grad(a_s[i], a_t[i], inv_n); }, len);
  for (int64_t i = 0; i < len; ++i)
    out[i] = attention::scaled_softmax_grad<acc>(a_s[i], focal::l1_grad(a_s[i], a_t[i], inv_n), weighted, inv_temp) *
             post_scale;
  return l1;
}

// One image: turns the channel sums (ks, kt: C) and pixel sums (ms, mt: H*W) of |S| and |T| into the
// masks in place (A_C^s, A_C^t, A_S^s, A_S^t), writes the attention-loss gradient coefficients
// (channel_att already divided by H*W, pixel_att by C) and returns sum |A_C^s - A_C^t| + sum |A_S^s - A_S^t|
// (in double).
template <typename acc>
double attention_image(acc* ks, acc* kt, acc* ms, acc* mt, acc* channel_att, acc* pixel_att, int64_t C, int64_t HW,
                    acc inv_n, acc inv_temp) {
  scaled_softmax_row<acc>(ms, ms, HW, inv_temp / C);
  scaled_softmax_row<acc>(mt, mt, HW, inv_temp / C);
  scaled_softmax_row<acc>(ks, ks, C, inv_temp / HW);
  scaled_softmax_row<acc>(kt, kt, C, inv_temp / HW);
  return attention_l1_row<acc>(ks, kt, channel_att, C, inv_n, inv_temp, acc(1) / HW) +
         attention_l1_row<acc>(ms, mt, pixel_att, HW, inv_n, inv_temp, acc(1) / C);
}

}  // namespace cpu
}  // namespace kdops
