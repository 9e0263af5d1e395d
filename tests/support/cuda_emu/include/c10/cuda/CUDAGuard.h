// Emulation shim of c10/cuda/CUDAGuard.h (test-only, docs/cuda_emulator.md): the emulated kernels
// run on CPU tensors, so there is no device to switch to.
#pragma once
#include <c10/core/Device.h>
#include <c10/util/Optional.h>

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};

struct OptionalCUDAGuard {
  explicit OptionalCUDAGuard(c10::optional<c10::Device>) {}
};

}  // namespace cuda
}  // namespace c10
