// The full-size output of a CPU backward (the gradient of a feature map or of a logit matrix).
//
// A fresh multi-MB tensor is mapped lazily: every 4 KiB page faults on first write. On small VMs that
// costs more than the arithmetic: relation_mse's backward at FPN P2, batch 2 (a 138 MB gradient) took
// ~57 ms, mostly faults, on a 2-core KVM Xeon. With KDOPS_CPU_HUGE_PAGES=1 such buffers are advised to
// use transparent huge pages before the first write (512x fewer faults): ~27 ms there once the
// process recycles freed huge pages. Opt-in, like torch's THP_MEM_ALLOC_ENABLE, because while the system has
// few free 2 MiB pages the kernel compacts memory on the fault path: the first buffers then took
// 150-210 ms there, and short runs get noisier. The advice concerns only memory this call allocated
// and changes no value; it is a no-op where THP is "never" and on other systems.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace kdops {
namespace cpu {

// Below this, a buffer spans too few 2 MiB huge pages for the advice to matter.
constexpr int64_t kHugePageAdviceBytes = int64_t(8) << 20;

inline bool huge_pages_wanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("KDOPS_CPU_HUGE_PAGES");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return wanted;
}

inline void advise_huge_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!huge_pages_wanted()) return;
  const int64_t bytes = fresh.numel() * static_cast<int64_t>(fresh.element_size());
  if (bytes < kHugePageAdviceBytes) return;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t first = (begin + page - 1) / page * page, last = (begin + bytes) / page * page;
  // The whole pages inside this buffer only; a refusal (EINVAL without THP support) is harmless.
  if (last > first) (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)fresh;
#endif
}

// A contiguous, uninitialised tensor shaped like `like`, for a gradient the caller writes in full.
inline at::Tensor empty_gradient_like(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like, at::MemoryFormat::Contiguous);
  advise_huge_pages(out);
  return out;
}

}  // namespace cpu
}  // namespace kdops
