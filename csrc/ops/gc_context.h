// Argument checks shared by the CPU and CUDA kernels of gc_context.
#pragma once
#include <vector>

#include "side_tensor.h"

namespace kdops {

inline void check_gc_feature(const at::Tensor& feat, const char* op) {
  check_feature(feat, op, "feat");
  TORCH_CHECK(feat.size(1) > 0 && feat.size(2) * feat.size(3) > 0, op,
              ": feat must have C >= 1 and H*W >= 1, got shape ", feat.sizes());
}

inline void check_gc_context_args(const at::Tensor& feat, const at::Tensor& weight, const at::Tensor& bias) {
  const char* op = "kdops.gc_context";
  check_gc_feature(feat, op);
  check_side_tensor(weight, feat, std::vector<int64_t>{feat.size(1)}, op, "weight");
  check_side_tensor(bias, feat, std::vector<int64_t>{1}, op, "bias");
}

inline void check_gc_context_backward_args(const at::Tensor& grad_context, const at::Tensor& feat,
                                           const at::Tensor& weight, const at::Tensor& context,
                                           const at::Tensor& probs) {
  const char* op = "kdops.gc_context_backward";
  check_gc_feature(feat, op);
  const std::vector<int64_t> channels{feat.size(0), feat.size(1)};
  check_side_tensor(weight, feat, std::vector<int64_t>{feat.size(1)}, op, "weight");
  check_side_tensor(grad_context, feat, channels, op, "grad_context");
  check_side_tensor(context, feat, channels, op, "context");
  check_side_tensor(probs, feat, std::vector<int64_t>{feat.size(0), feat.size(2), feat.size(3)}, op, "probs");
}

}  // namespace kdops
