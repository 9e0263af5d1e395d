// The attention part of FGD on CUDA (docs/math.md §1, §3), shared by the focal-loss and feature-pass
// kernels: once the four masks of an image are known, its attention loss and gradient coefficients.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "kdops/math/fgd_focal_loss.h"
#include "reduce.cuh"
#include "rows.cuh"

namespace kdops {
namespace cuda {

// Returns (to every thread) sum |a_s - a_t| over one row and writes
// out = d(sum |a_s - a_t| / N)/d(logits) * post_scale through a_s = len * softmax(logits / temp).
template <typename acc>
__device__ acc l1_softmax_grad_row(const acc* a_s, const acc* a_t, acc* out, int64_t len, acc inv_n, acc inv_temp,
                                   acc post_scale) {
  KahanSum<acc> local_l1, weighted;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    local_l1 += fabs(a_s[i] - a_t[i]);
    weighted += a_s[i] * focal::l1_grad(a_s[i], a_t[i], inv_n);
  }
  const acc l1 = block_sum(local_l1.value());
  const acc mean = block_sum(weighted.value()) / static_cast<acc>(len);
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
    out[i] = attention::scaled_softmax_grad<acc>(a_s[i], focal::l1_grad(a_s[i], a_t[i], inv_n), mean, inv_temp) *
             post_scale;
  return l1;
}

// One image per block: from the masks (spatial (N, HW), channel (N, C)), the attention-loss gradient
// coefficients (channel_att already divided by H*W, pixel_att by C) and att_part[n] = the image's
// sum |A_C^s - A_C^t| + sum |A_S^s - A_S^t|.
template <typename acc>
__global__ void attention_kernel(const acc* __restrict__ s_sp, const acc* __restrict__ t_sp,
                                 const acc* __restrict__ s_ch, const acc* __restrict__ t_ch, acc* __restrict__ pixel_att,
                                 acc* __restrict__ channel_att, acc* __restrict__ att_part, int64_t C, int64_t HW,
                                 acc inv_n, acc inv_temp) {
  const int64_t n = blockIdx.x;
  const acc l1_c = l1_softmax_grad_row<acc>(s_ch + n * C, t_ch + n * C, channel_att + n * C, C, inv_n, inv_temp,
                                            acc(1) / static_cast<acc>(HW));
  const acc l1_s = l1_softmax_grad_row<acc>(s_sp + n * HW, t_sp + n * HW, pixel_att + n * HW, HW, inv_n, inv_temp,
                                            acc(1) / static_cast<acc>(C));
  if (threadIdx.x == 0) att_part[n] = l1_c + l1_s;
}

// FGD's three focal terms (sums over the batch) divided by N, and the weighted loss; one thread writes them.
template <typename acc>
__device__ __forceinline__ void store_focal_loss(acc fg_sum, acc bg_sum, acc att_sum, int64_t N, acc alpha, acc beta,
                                                 acc gamma, acc* __restrict__ terms, acc* __restrict__ loss) {
  const acc inv_n = acc(1) / static_cast<acc>(N);
  terms[0] = fg_sum * inv_n;
  terms[1] = bg_sum * inv_n;
  terms[2] = att_sum * inv_n;
  loss[0] = focal::weighted_loss<acc>(alpha, terms[0], beta, terms[1], gamma, terms[2]);
}

// Host side, shared by both ops: the four masks of each image from their summed logits (softmax rows,
// in place), then each image's attention part and mask gradients.
template <typename acc>
inline void launch_attention(acc* s_spatial, acc* t_spatial, acc* s_channel, acc* t_channel, acc* pixel_att,
                             acc* channel_att, acc* att_part, int64_t N, int64_t C, int64_t HW, acc inv_temp,
                             const c10::cuda::CUDAStream& stream) {
  const acc channel_scale = inv_temp / static_cast<acc>(HW), pixel_scale = inv_temp / static_cast<acc>(C);
  scaled_softmax_rows_kernel<acc><<<N, 256, 0, stream>>>(s_channel, C, channel_scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  scaled_softmax_rows_kernel<acc><<<N, 256, 0, stream>>>(t_channel, C, channel_scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  scaled_softmax_rows_kernel<acc><<<N, 1024, 0, stream>>>(s_spatial, HW, pixel_scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  scaled_softmax_rows_kernel<acc><<<N, 1024, 0, stream>>>(t_spatial, HW, pixel_scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  attention_kernel<acc><<<N, 1024, 0, stream>>>(s_spatial, t_spatial, s_channel, t_channel, pixel_att, channel_att,
                                                att_part, C, HW, acc(1) / static_cast<acc>(N), inv_temp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace kdops
