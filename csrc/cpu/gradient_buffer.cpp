// The cache of freed full-size CPU gradient buffers (see gradient_buffer.h for why).
//
// A gradient of 8 MB or more is an ordinary resizable tensor whose storage comes from GradientAllocator:
// it takes memory from the cache when a buffer of exactly that byte size waits there (else c10::alloc_cpu),
// and its deleter hands the memory back instead of freeing it. Exact sizes only: a step's gradients repeat
// exactly, and an exact match never wastes memory. `resize_` goes through the same allocator.
#include "gradient_buffer.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

namespace kdops {
namespace cpu {
namespace {

class GradientCache {
 public:
  GradientCache() {
    const char* mb = std::getenv("KDOPS_CPU_GRADIENT_CACHE_MB");
    capacity_ = (mb == nullptr ? int64_t(1024) : std::max<int64_t>(0, std::atoll(mb))) << 20;
  }

  bool enabled() const { return capacity_ > 0; }

  // A cached buffer of exactly `bytes`, or nullptr.
  void* take(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
      if (it->first == bytes) {
        void* ptr = it->second;
        blocks_.erase(it);
        cached_ -= bytes;
        return ptr;
      }
    }
    return nullptr;
  }

  // A buffer no tensor uses any more: kept while it fits in the capacity, else freed.
  void give_back(void* ptr, int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= capacity_) {
        blocks_.emplace_back(bytes, ptr);
        cached_ += bytes;
        return;
      }
    }
    c10::free_cpu(ptr);
  }

  int64_t clear() {
    std::vector<std::pair<int64_t, void*>> blocks;
    int64_t freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(blocks_);
      freed = cached_;
      cached_ = 0;
    }
    for (auto& block : blocks) c10::free_cpu(block.second);
    return freed;
  }

  int64_t bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<int64_t, void*>> blocks_;
  int64_t cached_ = 0;
  int64_t capacity_ = 0;
};

// Never destroyed: a gradient may outlive static destruction at exit and still call give_back.
GradientCache& cache() {
  static GradientCache* instance = new GradientCache();
  return *instance;
}

// The deleter's context: the memory and its byte size.
struct Block {
  void* ptr;
  int64_t bytes;
};

void release(void* context) {
  const Block* block = static_cast<Block*>(context);
  if (block->bytes >= kReusedGradientBytes)
    cache().give_back(block->ptr, block->bytes);
  else
    c10::free_cpu(block->ptr);
  delete block;
}

class GradientAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    const int64_t bytes = static_cast<int64_t>(n);
    void* ptr = bytes >= kReusedGradientBytes ? cache().take(bytes) : nullptr;
    if (ptr == nullptr) ptr = c10::alloc_cpu(n);
    return {ptr, new Block{ptr, bytes}, &release, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

}  // namespace

at::Tensor empty_gradient_like(const at::Tensor& like) {
  const int64_t bytes = like.numel() * static_cast<int64_t>(like.element_size());
  if (bytes < kReusedGradientBytes || !cache().enabled())
    return at::empty_like(like, at::MemoryFormat::Contiguous);
  static GradientAllocator* allocator = new GradientAllocator();  // never destroyed, like the cache
  return at::detail::empty_generic(like.sizes(), allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   like.scalar_type(), c10::MemoryFormat::Contiguous);
}

int64_t empty_gradient_cache() { return cache().clear(); }

int64_t gradient_cache_bytes() { return cache().bytes(); }

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("empty_cpu_gradient_cache() -> int", &empty_gradient_cache);
  m.def("cpu_gradient_cache_bytes() -> int", &gradient_cache_bytes);
}

}  // namespace cpu
}  // namespace kdops
