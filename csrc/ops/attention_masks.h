// Argument checks shared by the CPU and CUDA kernels of attention_masks.
#pragma once
#include "kdops/common.h"

namespace kdops {

inline void check_attention_masks_args(const at::Tensor& feat, double temperature) {
  check_feature(feat, "kdops.attention_masks", "feat");
  TORCH_CHECK(feat.size(1) > 0 && feat.size(2) * feat.size(3) > 0,
              "kdops.attention_masks: feat must have C >= 1 and H*W >= 1, got shape ", feat.sizes());
  check_temperature(temperature, "kdops.attention_masks", "temperature");
}

inline void check_attention_masks_backward_args(const at::Tensor& grad_spatial, const at::Tensor& grad_channel,
                                                const at::Tensor& feat, const at::Tensor& spatial,
                                                const at::Tensor& channel) {
  const char* op = "kdops.attention_masks_backward";
  check_feature(feat, op, "feat");
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  TORCH_CHECK(spatial.sizes() == at::IntArrayRef({N, H, W}) && grad_spatial.sizes() == spatial.sizes(), op,
              ": spatial and grad_spatial must have shape (N, H, W) = (", N, ", ", H, ", ", W, ")");
  TORCH_CHECK(channel.sizes() == at::IntArrayRef({N, C}) && grad_channel.sizes() == channel.sizes(), op,
              ": channel and grad_channel must have shape (N, C) = (", N, ", ", C, ")");
}

}  // namespace kdops
