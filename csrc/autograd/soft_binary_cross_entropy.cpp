// Autograd of kdops::soft_binary_cross_entropy (the Python twin for the Triton op:
// kdops/ops/soft_binary_cross_entropy.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using OptT = c10::optional<T>;
using Forward = std::tuple<T, T>(const T&, const T&, const OptT&, double, double, double, double, int64_t);
using Backward = T(const T&, const T&, const T&, const OptT&, const T&, double, double, double, double, int64_t);
// The tensors the backward reads: kdops/ops/soft_binary_cross_entropy.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kTarget, kNorm, kCount };

struct SoftBinaryCrossEntropy : FirstOrderFunction<SoftBinaryCrossEntropy> {
  static constexpr const char* kOp = "soft_binary_cross_entropy";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const OptT& target,
                               double pos_weight, double neg_weight, double temperature, double mu,
                               int64_t ignore_index) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, norm] = op_handle<Forward>("kdops::soft_binary_cross_entropy")
                            .call(student, teacher, target, pos_weight, neg_weight, temperature, mu, ignore_index);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher},
                                                   {kTarget, saved_or_undefined(target)}, {kNorm, norm}}));
    ctx->saved_data["pos_weight"] = pos_weight;
    ctx->saved_data["neg_weight"] = neg_weight;
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["mu"] = mu;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->mark_non_differentiable({norm});
    return {loss, norm};
  }

  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 1, "soft_binary_cross_entropy", "teacher_logits");
    variable_list out(8);
    if (ctx->needs_input_grad(0)) {
      const auto s = ctx->get_saved_variables();
      auto& d = ctx->saved_data;
      out[0] = op_handle<Backward>("kdops::soft_binary_cross_entropy_backward")
                   .call(grads[0], s[kStudent], s[kTeacher], optional_of(s[kTarget]), s[kNorm],
                         d["pos_weight"].toDouble(), d["neg_weight"].toDouble(), d["temperature"].toDouble(),
                         d["mu"].toDouble(), d["ignore_index"].toInt());
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("soft_binary_cross_entropy",
         &autograd_kernel<SoftBinaryCrossEntropy, 2, const T&, const T&, const OptT&, double, double, double, double,
                          int64_t>);
}

}  // namespace autograd
}  // namespace kdops
