// Row kernels shared by the CUDA kernels: scaled softmaxes (A = len * softmax(x * scale)) and
// fixed-order sums of partials. One row per block; blockDim.x must be a multiple of 32.
#pragma once
#include "reduce.cuh"

namespace kdops {
namespace cuda {

// In place: row[i] = len * softmax(row[i] * scale), one row per block.
template <typename acc>
__global__ void scaled_softmax_rows_kernel(acc* __restrict__ data, int64_t len, acc scale) {
  acc* row = data + blockIdx.x * len;
  acc local_max = -INFINITY;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) local_max = fmax(local_max, row[i]);
  const acc mx = block_max(local_max);
  KahanSum<acc> local_sum;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    row[i] = exp((row[i] - mx) * scale);  // shifted before scaled: exact 1 at the max for any scale > 0
    local_sum += row[i];
  }
  const acc factor = static_cast<acc>(len) / block_sum(local_sum.value());
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) row[i] *= factor;
}

// out[n, c] = sum over p of part[n, p, c] (p in order), one image per block.
template <typename acc>
__global__ void sum_partials_kernel(const acc* __restrict__ part, acc* __restrict__ out, int64_t partials,
                                    int64_t C) {
  const int64_t n = blockIdx.x;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    KahanSum<acc> total;
    for (int64_t p = 0; p < partials; ++p) total += part[(n * partials + p) * C + c];
    out[n * C + c] = total.value();
  }
}

}  // namespace cuda
}  // namespace kdops
