// A work split that tolerates shared cores. at::parallel_for gives each thread one fixed share of the
// range, so when another process (a data-loader worker, a second job) deschedules one thread, the whole
// region waits for that thread's share while the others idle at the barrier. parallel_chunks cuts
// [0, n) into fixed chunks that the threads take one at a time from a shared counter: threads that run
// take over a descheduled one's remaining chunks. Chunk boundaries depend on neither the thread count
// nor the schedule, and callers write results per item or per chunk, so results stay bit-identical.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace kdops {
namespace cpu {

// f(begin, end) over [0, n) in chunks of `chunk` items (the last one shorter).
template <typename F>
void parallel_chunks(int64_t n, int64_t chunk, const F& f) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(chunks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
         c = next.fetch_add(1, std::memory_order_relaxed))
      f(c * chunk, std::min(n, (c + 1) * chunk));
  });
}

}  // namespace cpu
}  // namespace kdops
