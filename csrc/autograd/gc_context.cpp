// Autograd of kdops::gc_context (the Python twin for the Triton op: kdops/ops/gc_context.py).
#include "autograd.h"

#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using Forward = std::tuple<T, T>(const T&, const T&, const T&);
using Backward = std::tuple<T, T>(const T&, const T&, const T&, const T&, const T&, bool);
// The tensors the backward reads: kdops/ops/gc_context.py's `saved`, in its order (test_registry.py).
enum Saved { kFeat, kWeight, kContext, kProbs, kCount };

struct GcContext : FirstOrderFunction<GcContext> {
  static constexpr const char* kOp = "gc_context";

  static variable_list forward(AutogradContext* ctx, const T& feat, const T& weight, const T& bias) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [context, probs] = op_handle<Forward>("kdops::gc_context").call(feat, weight, bias);
    ctx->save_for_backward(in_saved_order<Saved>({{kFeat, feat}, {kWeight, weight}, {kContext, context},
                                                   {kProbs, probs}}));
    ctx->mark_non_differentiable({probs});
    ctx->set_materialize_grads(false);  // an unused context costs no pass over the feature
    return {context, probs};
  }

  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const T& weight = s[kWeight];
    const bool need_feat = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1);
    variable_list out(3);
    // The bias only shifts every logit of an image: softmax ignores it, so its gradient is exactly zero.
    if (ctx->needs_input_grad(2)) out[2] = at::zeros({1}, weight.options());
    const T& grad_context = grads[0];
    if (!grad_context.defined()) {
      if (need_weight) out[1] = at::zeros_like(weight);
      return out;
    }
    if (!need_feat && !need_weight) return out;
    auto [grad_feat, grad_weight] =
        op_handle<Backward>("kdops::gc_context_backward")
            .call(grad_context.to(s[kContext].scalar_type()), s[kFeat], weight, s[kContext], s[kProbs], need_feat);
    if (need_feat) out[0] = grad_feat;
    if (need_weight) out[1] = grad_weight;
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("gc_context",
         &autograd_kernel<GcContext, 2, const T&, const T&, const T&>);
}

}  // namespace autograd
}  // namespace kdops
