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
  __shared__ T result;  // its own slot: no thread reads a partial while another writes the total
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // a previous call's threads may still be reading `result`
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {  // one warp adds the partials
    const T identity = kMax ? -INFINITY : T(0);
    T r = lane < warps ? shared[lane] : identity;
    r = kMax ? warp_max(r) : warp_sum(r);
    if (lane == 0) result = r;
  }
  __syncthreads();
  return result;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) { return block_reduce<T, false>(v); }

template <typename T>
__device__ __forceinline__ T block_max(T v) { return block_reduce<T, true>(v); }

// A thread's running sum with Kahan compensation: `sum += x` in a loop of any length keeps the error
// at a few round-offs (over a 2^31-pixel plane the grid-stride and per-row loops add 10^5 to 10^8
// terms per thread, and a plain float32 sum's error grows with that count). value() is the sum.
// The compensation needs the adds in source order: setup.py builds without fast-math (FMA
// contraction may fuse a product into `x - comp`, which only makes it more exact).
template <typename T>
struct KahanSum {
  T sum = 0, comp = 0;  // comp: what rounding added too much so far

  __device__ __forceinline__ KahanSum& operator+=(T x) {
    const T y = x - comp;
    const T t = sum + y;
    comp = isfinite(t) ? (t - sum) - y : T(0);  // inf and NaN come out as in a plain sum
    sum = t;
    return *this;
  }
  __device__ __forceinline__ T value() const { return sum - comp; }
};

// Grid size for one-dimensional grid-stride loops over `count` items.
inline unsigned int blocks_for(int64_t count, int threads, int64_t cap = 65535) {
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

}  // namespace cuda
}  // namespace kdops
