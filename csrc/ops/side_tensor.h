// Check of the small per-pixel / per-channel tensors the FGD ops pass around (masks, weights, deltas).
#pragma once
#include "kdops/common.h"

namespace kdops {

// An (N, H, W) or (N, C) per-pixel / per-channel tensor in the accumulation dtype of `feat`.
inline void check_side_tensor(const at::Tensor& t, const at::Tensor& feat, at::IntArrayRef shape, const char* op,
                              const char* arg) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", arg, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == acc_dtype(feat.scalar_type()), op, ": ", arg, " must be ",
              acc_dtype(feat.scalar_type()), " for ", feat.scalar_type(), " features, got ", t.scalar_type());
  TORCH_CHECK(t.device() == feat.device(), op, ": ", arg, " must be on the features' device ", feat.device(),
              ", got ", t.device());
}

}  // namespace kdops
