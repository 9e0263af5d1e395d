// The full-size output of a CPU backward (the gradient of a feature map or of a logit matrix).
//
// A fresh multi-MB tensor is mapped lazily: every 4 KiB page faults on first write, and freeing it
// unmaps it again. On small VMs that costs more than the arithmetic: relation_mse's backward at FPN P2,
// batch 2 (a 138 MB gradient) took ~57 ms, mostly faults, on a 2-core KVM Xeon, against ~25 ms when
// the memory was already mapped. A training loop makes the same gradients every step, so buffers of
// 8 MB and more come from a small cache of freed gradient buffers (gradient_buffer.cpp): exact sizes,
// bounded (KDOPS_CPU_GRADIENT_CACHE_MB, default 1024; 0 turns it off), emptied by
// kdops.empty_cpu_gradient_cache(). It holds only memory no tensor uses any more.
#pragma once

#include <ATen/core/Tensor.h>

namespace kdops {
namespace cpu {

// Below this, faults cost little next to the kernel: plain at::empty.
constexpr int64_t kReusedGradientBytes = int64_t(8) << 20;

// A contiguous, uninitialised tensor shaped like `like`, for a gradient the caller writes in full.
at::Tensor empty_gradient_like(const at::Tensor& like);

// Frees every cached buffer; returns how many bytes it held.
int64_t empty_gradient_cache();

// Bytes the cache holds now (freed gradient buffers waiting for reuse).
int64_t gradient_cache_bytes();

}  // namespace cpu
}  // namespace kdops
