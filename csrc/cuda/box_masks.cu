// CUDA kernels of the FGD box masks (docs/math.md §2); same algorithm as kdops/triton/box_masks.py.
// Each block owns one image and 256 pixels (one per thread) and walks all boxes in tiles staged
// in shared memory; boxes of other images or invalid ones are marked empty while staging. The max
// over boxes is order-free (exact, deterministic). Per-block background counts are added in a
// fixed order by the background kernel. No atomics, no host sync.
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers we do not use.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kdops/math/box_masks.h"
#include "../ops/box_masks.h"
#include "reduce.cuh"

namespace kdops {
namespace {

using namespace kdops::cuda;
constexpr int kThreads = 256;

template <typename scalar_t, typename acc>
__global__ void fg_kernel(const scalar_t* __restrict__ boxes, const int64_t* __restrict__ image_index, int64_t K,
                          int64_t H, int64_t W, acc* __restrict__ fg, int* __restrict__ zeros) {
  __shared__ int64_t span[kThreads][4];
  __shared__ acc value[kThreads];
  const int64_t n = blockIdx.y, tiles = gridDim.x;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = p < H * W;
  const int64_t h = p / W, w = p % W;
  acc best = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kThreads) {
    const int64_t k = k0 + threadIdx.x;
    acc v = 0;
    int64_t s[4] = {0, 0, -1, -1};
    const bool writes = k < K && image_index[k] == n &&
                        boxes::box_span<acc>(static_cast<acc>(boxes[4 * k]), static_cast<acc>(boxes[4 * k + 1]),
                                             static_cast<acc>(boxes[4 * k + 2]), static_cast<acc>(boxes[4 * k + 3]),
                                             H, W, s, &v);
    if (!writes) v = 0;  // value 0 never beats `best`: the box is skipped
    for (int i = 0; i < 4; ++i) span[threadIdx.x][i] = s[i];
    value[threadIdx.x] = v;
    __syncthreads();
    const int64_t count = K - k0 < kThreads ? K - k0 : kThreads;
    if (active) {
      for (int64_t i = 0; i < count; ++i) {
        if (value[i] > best && w >= span[i][0] && h >= span[i][1] && w <= span[i][2] && h <= span[i][3])
          best = value[i];
      }
    }
    __syncthreads();  // the next tile overwrites the shared boxes
  }
  if (active) fg[n * H * W + p] = best;
  const int background = __syncthreads_count(active && best == acc(0));
  if (threadIdx.x == 0) zeros[n * tiles + blockIdx.x] = background;
}

template <typename acc>
__global__ void bg_kernel(const acc* __restrict__ fg, const int* __restrict__ zeros, acc* __restrict__ bg,
                          int64_t HW) {
  const int64_t n = blockIdx.y, tiles = gridDim.x;
  double local = 0;  // exact for any realistic map size
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) local += zeros[n * tiles + t];
  const double total = block_sum(local);
  const acc inv = total == 0.0 ? acc(0) : static_cast<acc>(1.0 / total);
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (p < HW) bg[n * HW + p] = fg[n * HW + p] == acc(0) ? inv : acc(0);
}

std::tuple<at::Tensor, at::Tensor> box_masks_cuda(const at::Tensor& boxes_in, const at::Tensor& image_index_in,
                                                  int64_t batch, int64_t height, int64_t width) {
  check_box_masks_args(boxes_in, image_index_in, batch, height, width);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous(), image_index = image_index_in.contiguous();
  const auto opts = boxes.options().dtype(acc_dtype(boxes.scalar_type()));
  at::Tensor fg = at::empty({batch, height, width}, opts), bg = at::empty({batch, height, width}, opts);
  if (batch == 0) return {fg, bg};
  TORCH_CHECK(batch <= 65535, "kdops.box_masks: at most 65535 images per call on CUDA, got ", batch);
  const int64_t HW = height * width, tiles = (HW + kThreads - 1) / kThreads;
  at::Tensor zeros = at::empty({batch, tiles}, boxes.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(batch));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "kdops_box_masks_cuda", [&] {
    using acc = acc_t<scalar_t>;
    fg_kernel<scalar_t, acc><<<grid, kThreads, 0, stream>>>(boxes.const_data_ptr<scalar_t>(),
                                                            image_index.const_data_ptr<int64_t>(), boxes.size(0),
                                                            height, width, fg.data_ptr<acc>(), zeros.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bg_kernel<acc><<<grid, kThreads, 0, stream>>>(fg.const_data_ptr<acc>(), zeros.const_data_ptr<int>(),
                                                  bg.data_ptr<acc>(), HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {fg, bg};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) { m.impl("box_masks", &box_masks_cuda); }

}  // namespace kdops
