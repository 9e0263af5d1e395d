// Warp and block reductions shared by the CUDA kernels. Block reductions need blockDim.x to be a
// multiple of 32 (at most 1024) and every thread of the block to call them.
#pragma once
#include <cuda_runtime.h>

#include <cmath>

namespace kdops {
namespace cuda {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = fmax(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}

// Returns the block-wide result to every thread.
template <typename T, bool kMax>
__device__ T block_reduce(T v) {
  __shared__ T shared[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const T identity = kMax ? -INFINITY : T(0);
  T r = lane < warps ? shared[lane] : identity;
  r = kMax ? warp_max(r) : warp_sum(r);
  if (threadIdx.x == 0) shared[0] = r;
  __syncthreads();
  return shared[0];
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) { return block_reduce<T, false>(v); }

template <typename T>
__device__ __forceinline__ T block_max(T v) { return block_reduce<T, true>(v); }

// Grid size for one-dimensional grid-stride loops over `count` items.
inline unsigned int blocks_for(int64_t count, int threads, int64_t cap = 65535) {
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

}  // namespace cuda
}  // namespace kdops
