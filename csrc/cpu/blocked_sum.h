// Sums whose error does not grow with their length. A float32 accumulator (or one per SIMD lane) that
// runs over a whole H*W plane stops taking small terms once it is ~2^24 times larger: at 46341^2 a
// plane's sum came out 56% low. Here [0, n) is cut into blocks of kSumBlock items, each block is summed
// by the caller's vectorised reduction in the accumulation type (error bounded by the block length),
// and the block results are added in double. Fixed blocks: the result does not depend on threads.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

namespace kdops {
namespace cpu {

constexpr int64_t kSumBlock = 2048;

// block(j0, j1) returns the sum over [j0, j1) (at most kSumBlock items) as one number or a std::array
// of several; the result is their sum over [0, n) in double, in the same shape.
template <typename F>
inline __attribute__((always_inline)) auto blocked_sum(int64_t n, const F& block) {
  using R = decltype(block(int64_t(0), int64_t(0)));
  if constexpr (std::is_arithmetic_v<R>) {
    double total = 0;
    for (int64_t j0 = 0; j0 < n; j0 += kSumBlock) total += static_cast<double>(block(j0, std::min(n, j0 + kSumBlock)));
    return total;
  } else {
    std::array<double, std::tuple_size_v<R>> total{};
    for (int64_t j0 = 0; j0 < n; j0 += kSumBlock) {
      const R part = block(j0, std::min(n, j0 + kSumBlock));
      for (size_t k = 0; k < total.size(); ++k) total[k] += static_cast<double>(part[k]);
    }
    return total;
  }
}

}  // namespace cpu
}  // namespace kdops
