// One-launch deterministic grid reduction ("last block finishes"): every block publishes its K
// block-level sums, takes a ticket from an atomic counter, and the block that draws the last ticket
// adds all blocks' partials in block order (a fixed order for a given grid, so the result is
// deterministic: no floating-point atomics). The forward of a loss is then one kernel launch
// (plus a memset of the ticket) and nothing is read back on the host.
#pragma once
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include "kdops/common.h"
#include "reduce.cuh"

namespace kdops {
namespace cuda {

// A zeroed ticket counter on `stream`, as a 1-element int32 tensor (keeps the allocation alive).
inline at::Tensor zeroed_ticket(const at::Tensor& like, cudaStream_t stream) {
  at::Tensor ticket = at::empty({1}, like.options().dtype(at::kInt));
  C10_CUDA_CHECK(cudaMemsetAsync(ticket.data_ptr<int>(), 0, sizeof(int), stream));
  return ticket;
}

// `mine` must be this block's sums (every thread passes the block-wide values). Returns true in
// every thread of the last block, with `total` holding the grid-wide sums; false elsewhere.
// Every thread of every block must call it.
template <typename acc, int K>
__device__ bool last_block_sums(const acc (&mine)[K], acc* partial, int* ticket, acc (&total)[K]) {
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    for (int k = 0; k < K; ++k) partial[blockIdx.x * K + k] = mine[k];
    __threadfence();  // publish the partials before taking the ticket
    is_last = atomicAdd(ticket, 1) == static_cast<int>(gridDim.x) - 1;
  }
  __syncthreads();
  if (!is_last) return false;
  __threadfence();
  for (int k = 0; k < K; ++k) {
    KahanSum<acc> local;
    for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) local += __ldcg(partial + b * K + k);
    total[k] = block_sum(local.value());
  }
  return true;
}

}  // namespace cuda
}  // namespace kdops
