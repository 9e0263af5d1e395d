// Short rows (91 classes) whose length is not a multiple of the vector width would end every row in a
// scalar epilogue, and GCC 12 compiles the branch-free exp there into branches: for 91 classes that tail
// cost as much as the vector body. Row loops therefore run their vector body over whole blocks of
// kTailLanes, then once more over the row's last kTailLanes items; in that overlapping block the items
// already counted are masked out of sums (tail_mask) and rewritten with the same value in outputs.
#pragma once
#include <cstdint>

namespace kdops {
namespace cpu {

constexpr int64_t kTailLanes = 16;  // floats in one AVX-512 register

inline int64_t whole_blocks(int64_t n) { return n - n % kTailLanes; }

// For a row of n >= kTailLanes items whose last block starts at n - kTailLanes: 0 for the items of that
// block already covered by whole_blocks(n), 1 for the rest.
template <typename acc>
const acc* tail_mask(int64_t n) {
  static constexpr acc kMask[2 * kTailLanes] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                                1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  return kMask + n % kTailLanes;
}

}  // namespace cpu
}  // namespace kdops
