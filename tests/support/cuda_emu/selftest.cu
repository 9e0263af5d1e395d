// Deliberately small (and partly deliberately wrong) kernels that tests/native/test_cuda_emulator.py runs to
// prove the emulator enforces CUDA's rules. Built only into the emulation library (build.py), through
// the same rewriting as csrc/cuda/*.cu. Ops: torch.ops.kdemu_selftest.*, on CPU tensors.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

namespace {

// Threads with threadIdx.x >= active return before the barrier: an error unless active == blockDim.x.
__global__ void partial_barrier_kernel(float* out, int active) {
  if (static_cast<int>(threadIdx.x) >= active) return;
  out[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] += 1.0f;
}

at::Tensor partial_barrier(int64_t threads, int64_t active) {
  at::Tensor out = at::zeros({threads}, at::kFloat);
  partial_barrier_kernel<<<1, static_cast<unsigned>(threads), 0, c10::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<float>(), static_cast<int>(active));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// out[i] = x[i + shift] for i < n + extra: reads (shift) or writes (extra) past the allocations.
__global__ void copy_kernel(const float* x, float* out, int64_t n, int64_t shift) {
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = x[i + shift];
}

at::Tensor copy(const at::Tensor& x, int64_t extra, int64_t shift) {
  at::Tensor out = at::empty_like(x);
  copy_kernel<<<2, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(x.const_data_ptr<float>(), out.data_ptr<float>(),
                                                               x.numel() + extra, shift);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// out[t] = buf[t] with buf written (init) or not: shared memory starts as garbage.
__global__ void shared_kernel(float* out, bool init) {
  __shared__ float buf[64];
  if (init) buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

at::Tensor shared_read(bool init) {
  at::Tensor out = at::zeros({2, 64}, at::kFloat);
  shared_kernel<<<2, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<float>(), init);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// A full-mask shuffle in a block of `threads`: an error when the last warp is partial.
__global__ void warp_kernel(int* out) {
  const int lane = threadIdx.x % 32;
  const int down = __shfl_down_sync(0xffffffffu, lane * 10, 3);
  const int first = __shfl_sync(0xffffffffu, lane + 100, 0);
  const unsigned odd = __ballot_sync(0xffffffffu, lane % 2 == 1);
  const int count = __syncthreads_count(threadIdx.x < 40);
  int* o = out + threadIdx.x * 4;
  o[0] = down;
  o[1] = first;
  o[2] = static_cast<int>(odd);
  o[3] = count;
}

at::Tensor warp(int64_t threads) {
  at::Tensor out = at::zeros({threads, 4}, at::kInt);
  warp_kernel<<<1, static_cast<unsigned>(threads), 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// out[k] = the block that ran k-th: the emulator runs blocks in a shuffled order.
__global__ void order_kernel(int* ticket, int* out) {
  if (threadIdx.x == 0) out[atomicAdd(ticket, 1)] = static_cast<int>(blockIdx.x);
}

at::Tensor block_order(int64_t blocks, bool check_launch) {
  at::Tensor ticket = at::zeros({1}, at::kInt), out = at::full({std::max<int64_t>(blocks, 1)}, -1, at::kInt);
  order_kernel<<<static_cast<unsigned>(blocks), 32, 0, c10::cuda::getCurrentCUDAStream()>>>(ticket.data_ptr<int>(),
                                                                                            out.data_ptr<int>());
  if (check_launch) C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Races: `shared` = thread 0 publishes a value that the others read with no __syncthreads between;
// otherwise every block's thread 0 folds its index into out[0] (a digit in base 8: the blocks' order).
__global__ void race_kernel(float* out, bool shared) {
  __shared__ float value;
  if (shared) {
    if (threadIdx.x == 0) value = 1.0f;
    out[threadIdx.x] = value;  // missing __syncthreads: read before or after thread 0's write
  } else if (threadIdx.x == 0) {
    out[0] = out[0] * 8.0f + static_cast<float>(blockIdx.x);
  }
}

at::Tensor race(bool shared) {
  at::Tensor out = at::zeros({64}, at::kFloat);
  race_kernel<<<shared ? 1 : 8, 64, 0, c10::cuda::getCurrentCUDAStream()>>>(out.data_ptr<float>(), shared);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY(kdemu_selftest, m) {
  m.def("race(bool shared) -> Tensor");
  m.def("partial_barrier(int threads, int active) -> Tensor");
  m.def("copy(Tensor x, int extra, int shift) -> Tensor");
  m.def("shared_read(bool init) -> Tensor");
  m.def("warp(int threads) -> Tensor");
  m.def("block_order(int blocks, bool check_launch) -> Tensor");
}

// Most of these ops take no tensor, so no backend key can be dispatched on: register them for all.
TORCH_LIBRARY_IMPL(kdemu_selftest, CompositeExplicitAutograd, m) {
  m.impl("partial_barrier", &partial_barrier);
  m.impl("copy", &copy);
  m.impl("shared_read", &shared_read);
  m.impl("warp", &warp);
  m.impl("block_order", &block_order);
  m.impl("race", &race);
}
