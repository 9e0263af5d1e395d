// How an emulated CUDA entry point is registered (test-only, docs/cuda_emulator.md): build.py rewrites
// `m.impl("op", &op_cuda)` into `m.impl("op", &kdemu::Guarded<&op_cuda>::call)`. The call copies every
// tensor argument into guard-page memory and allocates every tensor it makes there too, so that an
// out-of-bounds access in a kernel faults; and it fails if a failed launch was never checked.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace kdemu {

struct GuardScope {  // the guard-page CPU allocator while it lives
  GuardScope();
  ~GuardScope();
  GuardScope(const GuardScope&) = delete;
  GuardScope& operator=(const GuardScope&) = delete;
  void finish();
};

at::Tensor guard_copy(const at::Tensor& t);
c10::optional<at::Tensor> guard_copy(const c10::optional<at::Tensor>& t);
template <typename T>
const T& guard_copy(const T& v) { return v; }

template <auto F>
struct Guarded;

template <typename R, typename... A, R (*F)(A...)>
struct Guarded<F> {
  static R call(A... a) {
    GuardScope scope;
    R r = F(guard_copy(a)...);
    scope.finish();
    return r;
  }
};

}  // namespace kdemu
