// CUDA SIMT emulation layer: test infrastructure only (docs/cuda_emulator.md), never part of the
// installed extension. build.py (beside include/) compiles csrc/cuda/*.cu with the host compiler against
// this header (it shadows the real <cuda_runtime.h>); every CUDA thread of a block is a fiber of
// runtime.cpp, so __syncthreads and the warp collectives are real barriers across them.
#pragma once

#include <math.h>  // the float overloads of exp, log, ... in the global namespace, as in device code

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct kdemu_stream*;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, int kind, cudaStream_t stream = nullptr);

namespace kdemu {

// One emulated CUDA thread (a fiber of runtime.cpp); the header reads only `idx`.
struct Thread {
  uint3 idx;
};

extern Thread* g_self;  // the thread running now
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

inline const uint3& thread_idx() { return g_self->idx; }
inline const uint3& block_idx() { return g_block_idx; }
inline const dim3& block_dim() { return g_block_dim; }
inline const dim3& grid_dim() { return g_grid_dim; }

// Block barrier; `count` is __syncthreads_count's predicate (returns how many threads passed non-zero).
int barrier(int pred, const char* file, int line);

// Warp collectives: every lane named in `mask` must call the same one at the same time.
enum WarpOp { kShflIdx, kShflDown, kShflUp, kShflXor, kBallot };
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);

template <typename T>
T shuffle(WarpOp op, const char* file, int line, unsigned mask, T v, int arg, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of a large type");
  uint64_t in = 0;
  std::memcpy(&in, &v, sizeof(T));
  const uint64_t out = warp_collective(op, mask, in, arg, width, file, line);
  T r;
  std::memcpy(&r, &out, sizeof(T));
  return r;
}

// Registers a __shared__ variable (build.py rewrites `__shared__ T x...;` into a static plus this):
// it is filled with 0xff bytes (NaN in every float type) now and at the start of every block.
bool shared_region(void* p, size_t bytes);

struct Config {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  Config(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = nullptr) : grid(g), block(b), smem(s), stream(st) {}
};

// Runs body(ctx) in every thread of every block (blocks in a shuffled order).
void run(const char* kernel, const char* site, const Config& cfg, void (*body)(void*), void* ctx);

// build.py rewrites `kernel<<<cfg>>>(args)` into launch("kernel", "file:line", Config(cfg), kernel, args):
// the arguments are converted to the kernel's parameter types once, and each thread gets its own copy.
template <typename... P, typename... A>
void launch(const char* kernel, const char* site, const Config& cfg, void (*fn)(P...), A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  struct Ctx {
    void (*fn)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{fn, std::tuple<std::decay_t<P>...>(static_cast<std::decay_t<P>>(std::forward<A>(args))...)};
  run(kernel, site, cfg, [](void* c) {
    auto* x = static_cast<Ctx*>(c);
    std::tuple<std::decay_t<P>...> mine = x->params;  // by value, like kernel parameters
    std::apply(x->fn, mine);
  }, &ctx);
}

}  // namespace kdemu

#define threadIdx (::kdemu::thread_idx())
#define blockIdx (::kdemu::block_idx())
#define blockDim (::kdemu::block_dim())
#define gridDim (::kdemu::grid_dim())
#define warpSize 32

#define __syncthreads() ((void)::kdemu::barrier(0, __FILE__, __LINE__))
#define __syncthreads_count(pred) ::kdemu::barrier((pred) ? 1 : 0, __FILE__, __LINE__)
#define __shfl_sync(...) ::kdemu::shuffle(::kdemu::kShflIdx, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::kdemu::shuffle(::kdemu::kShflDown, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::kdemu::shuffle(::kdemu::kShflUp, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::kdemu::shuffle(::kdemu::kShflXor, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  static_cast<unsigned>(::kdemu::warp_collective(::kdemu::kBallot, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) (__ballot_sync(mask, pred) != 0u)
#define __all_sync(mask, pred) (__ballot_sync(mask, pred) == static_cast<unsigned>(mask))

// One OS thread runs every emulated thread, and a fiber switches only inside the collectives above:
// memory is always coherent, so fences have nothing to do and atomics need no locking.
inline void __threadfence() {}
inline void __threadfence_block() {}
template <typename T>
inline T __ldcg(const T* p) { return *p; }
template <typename T>
inline T __ldg(const T* p) { return *p; }

template <typename T, typename U>
inline T atomicAdd(T* p, U v) {
  const T old = *p;
  *p = static_cast<T>(old + v);
  return old;
}
template <typename T, typename U>
inline T atomicSub(T* p, U v) {
  const T old = *p;
  *p = static_cast<T>(old - v);
  return old;
}
template <typename T, typename U>
inline T atomicExch(T* p, U v) {
  const T old = *p;
  *p = static_cast<T>(v);
  return old;
}
template <typename T, typename U>
inline T atomicMax(T* p, U v) {
  const T old = *p;
  if (static_cast<T>(v) > old) *p = static_cast<T>(v);
  return old;
}
template <typename T, typename U>
inline T atomicMin(T* p, U v) {
  const T old = *p;
  if (static_cast<T>(v) < old) *p = static_cast<T>(v);
  return old;
}
template <typename T, typename U, typename V>
inline T atomicCAS(T* p, U compare, V v) {
  const T old = *p;
  if (old == static_cast<T>(compare)) *p = static_cast<T>(v);
  return old;
}
