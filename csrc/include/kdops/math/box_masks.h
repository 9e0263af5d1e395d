// Per-box math of the FGD box masks (docs/math.md §2), one source for CPU and CUDA.
#pragma once
#include <cmath>

#include "kdops/common.h"

namespace kdops {
namespace boxes {

// Inclusive pixel span of one box on an H x W map and the mask value it writes, or false when
// the box writes nothing: not finite, x2 < x1 or y2 < y1, or entirely outside the map.
// wmin = floor(x1), wmax = ceil(x2) (likewise for y); value = 1 / the whole box's size (FGD eq. 2, as the
// official code), computed before the span is clipped to the map.
// The comparisons run in floating point before any integer cast, so huge coordinates cannot overflow.
template <typename acc>
KDOPS_HD bool box_span(acc x1, acc y1, acc x2, acc y2, int64_t height, int64_t width, int64_t span[4], acc* value) {
  // x - x is 0 exactly for finite x, NaN for NaN and +-inf.
  const bool finite = (x1 - x1 == acc(0)) && (y1 - y1 == acc(0)) && (x2 - x2 == acc(0)) && (y2 - y2 == acc(0));
  if (!finite || x2 < x1 || y2 < y1) return false;
  acc wmin = ::floor(x1), wmax = ::ceil(x2), hmin = ::floor(y1), hmax = ::ceil(y2);
  const acc last_w = static_cast<acc>(width - 1), last_h = static_cast<acc>(height - 1);
  if (wmax < acc(0) || hmax < acc(0) || wmin > last_w || hmin > last_h) return false;
  *value = acc(1) / ((hmax - hmin + acc(1)) * (wmax - wmin + acc(1)));
  wmin = wmin < acc(0) ? acc(0) : wmin;
  hmin = hmin < acc(0) ? acc(0) : hmin;
  wmax = wmax > last_w ? last_w : wmax;
  hmax = hmax > last_h ? last_h : hmax;
  span[0] = static_cast<int64_t>(wmin);
  span[1] = static_cast<int64_t>(hmin);
  span[2] = static_cast<int64_t>(wmax);
  span[3] = static_cast<int64_t>(hmax);
  return true;
}

}  // namespace boxes
}  // namespace kdops
