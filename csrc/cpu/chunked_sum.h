// Deterministic parallel sums for the CPU kernels: [0, n) is cut into fixed chunks (independent of
// the thread count), each chunk is summed by one thread, and the chunk results are added in chunk
// order. The result is therefore the same for any number of threads.
#pragma once
#include <ATen/Parallel.h>

#include <array>
#include <vector>

namespace kdops {
namespace cpu {

// f(begin, end) returns the K sums over items [begin, end).
template <typename acc, int K, typename F>
std::array<acc, K> chunked_sum(int64_t n, int64_t chunk, const F& f) {
  std::array<acc, K> total{};
  if (n <= 0) return total;
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<std::array<acc, K>> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) partial[c] = f(c * chunk, std::min(n, (c + 1) * chunk));
  });
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
