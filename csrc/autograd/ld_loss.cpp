// Autograd of kdops::ld_loss (the Python twin for the Triton op: kdops/ops/ld_loss.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using OptT = c10::optional<at::Tensor>;
using Forward = std::tuple<T, T, T>(const T&, const T&, const OptT&, double, c10::string_view);
using Backward = T(const T&, const T&, const T&, const OptT&, const T&, const T&, double);
// The tensors the backward reads: kdops/ops/ld_loss.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kWeight, kNorm, kRowStats, kCount };

struct LdLoss : FirstOrderFunction<LdLoss> {
  static constexpr const char* kOp = "ld_loss";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const OptT& weight,
                               double temperature, c10::string_view normalize) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, norm, row_stats] =
        op_handle<Forward>("kdops::ld_loss").call(student, teacher, weight, temperature, normalize);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher},
                                                   {kWeight, saved_or_undefined(weight)}, {kNorm, norm},
                                                   {kRowStats, row_stats}}));
    ctx->saved_data["temperature"] = temperature;
    ctx->mark_non_differentiable({norm, row_stats});
    return {loss, norm, row_stats};
  }

  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 1, "ld_loss", "teacher_logits");
    variable_list out(5);
    if (ctx->needs_input_grad(0)) {
      const auto s = ctx->get_saved_variables();
      out[0] = op_handle<Backward>("kdops::ld_loss_backward")
                   .call(grads[0], s[kStudent], s[kTeacher], optional_of(s[kWeight]), s[kNorm], s[kRowStats],
                         ctx->saved_data["temperature"].toDouble());
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("ld_loss", &autograd_kernel<LdLoss, 3, const T&, const T&, const OptT&, double, c10::string_view>);
}

}  // namespace autograd
}  // namespace kdops
