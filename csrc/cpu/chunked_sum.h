// Deterministic parallel sums for the CPU kernels: [0, n) is cut into fixed chunks (independent of
// the thread count), each chunk is summed by whichever thread takes it (parallel.h), and the chunk
// results are added in chunk order, in double (the chunk results of a long range would otherwise lose
// the float32 round-off each chunk keeps: see blocked_sum.h). The result is therefore the same for any
// number of threads.
#pragma once
#include <ATen/Parallel.h>

#include <array>
#include <vector>

#include "parallel.h"

namespace kdops {
namespace cpu {

// f(begin, end) returns the K sums over items [begin, end) (in acc); the totals are in double.
template <typename acc, int K, typename F>
std::array<double, K> chunked_sum(int64_t n, int64_t chunk, const F& f) {
  std::array<double, K> total{};
  if (n <= 0) return total;
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<std::array<acc, K>> partial(chunks);
  parallel_chunks(n, chunk, [&](int64_t begin, int64_t end) { partial[begin / chunk] = f(begin, end); });
  for (const auto& p : partial)
    for (int k = 0; k < K; ++k) total[k] += p[k];
  return total;
}

// Items per chunk so that a chunk holds about `work` elements of `item_size` each.
inline int64_t items_per_chunk(int64_t item_size, int64_t work = 16384) {
  return std::max<int64_t>(1, work / std::max<int64_t>(item_size, 1));
}

}  // namespace cpu
}  // namespace kdops
