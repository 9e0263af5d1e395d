// Emulation shim of c10/cuda/CUDAException.h (test-only, docs/cuda_emulator.md).
#pragma once
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                                            \
  do {                                                                                                  \
    const cudaError_t kdemu_err = (EXPR);                                                               \
    TORCH_CHECK(kdemu_err == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(kdemu_err));    \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
