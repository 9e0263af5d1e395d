// Autograd of kdops::soft_cross_entropy (the Python twin for the Triton op: kdops/ops/soft_cross_entropy.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                               const c10::optional<at::Tensor>&,
                                                               const c10::optional<at::Tensor>&, double, double,
                                                               int64_t);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                            const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double, double,
                            int64_t);
// The tensors the backward reads: kdops/ops/soft_cross_entropy.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kClassWeight, kTarget, kNorm, kRowStats, kCount };

struct SoftCrossEntropy : FirstOrderFunction<SoftCrossEntropy> {
  static constexpr const char* kOp = "soft_cross_entropy";

  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                               const c10::optional<at::Tensor>& class_weight, const c10::optional<at::Tensor>& target,
                               double temperature, double mu, int64_t ignore_index) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, norm, row_stats] = op_handle<Forward>("kdops::soft_cross_entropy")
                                       .call(student, teacher, class_weight, target, temperature, mu, ignore_index);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher},
                                                   {kClassWeight, saved_or_undefined(class_weight)},
                                                   {kTarget, saved_or_undefined(target)}, {kNorm, norm},
                                                   {kRowStats, row_stats}}));
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["mu"] = mu;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->mark_non_differentiable({norm, row_stats});
    return {loss, norm, row_stats};
  }

  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 1, "soft_cross_entropy", "teacher_logits");
    variable_list out(7);
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      out[0] = op_handle<Backward>("kdops::soft_cross_entropy_backward")
                   .call(grads[0], saved[kStudent], saved[kTeacher], optional_of(saved[kClassWeight]),
                         optional_of(saved[kTarget]), saved[kNorm], saved[kRowStats],
                         ctx->saved_data["temperature"].toDouble(), ctx->saved_data["mu"].toDouble(),
                         ctx->saved_data["ignore_index"].toInt());
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("soft_cross_entropy",
         &autograd_kernel<SoftCrossEntropy, 3, const at::Tensor&, const at::Tensor&,
                          const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, double, double,
                          int64_t>);
}

}  // namespace autograd
}  // namespace kdops
