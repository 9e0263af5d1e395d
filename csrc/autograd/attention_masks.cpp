// Autograd of kdops::attention_masks (the Python twin for the Triton op: kdops/ops/attention_masks.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using Forward = std::tuple<T, T>(const T&, double);
using Backward = T(const T&, const T&, const T&, const T&, const T&, double);
// The tensors the backward reads: kdops/ops/attention_masks.py's `saved`, in its order (test_registry.py).
enum Saved { kFeat, kSpatial, kChannel, kCount };

struct AttentionMasks : FirstOrderFunction<AttentionMasks> {
  static constexpr const char* kOp = "attention_masks";

  static variable_list forward(AutogradContext* ctx, const T& feat, double temperature) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [spatial, channel] = op_handle<Forward>("kdops::attention_masks").call(feat, temperature);
    ctx->save_for_backward(in_saved_order<Saved>({{kFeat, feat}, {kSpatial, spatial}, {kChannel, channel}}));
    ctx->saved_data["temperature"] = temperature;
    return {spatial, channel};
  }

  // An unused output's gradient arrives as zeros (materialised grads).
  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {op_handle<Backward>("kdops::attention_masks_backward")
                .call(grads[0], grads[1], saved[kFeat], saved[kSpatial], saved[kChannel],
                      ctx->saved_data["temperature"].toDouble()),
            T()};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("attention_masks",
         &autograd_kernel<AttentionMasks, 2, const T&, double>);
}

}  // namespace autograd
}  // namespace kdops
