// Autograd of kdops::quality_focal_kd (the Python twin for the Triton op: kdops/ops/quality_focal_kd.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using OptT = c10::optional<T>;
using Forward = std::tuple<T, T>(const T&, const T&, const OptT&, double, c10::string_view);
using Backward = T(const T&, const T&, const T&, const OptT&, const T&, double);
// The tensors the backward reads: kdops/ops/quality_focal_kd.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kWeight, kNorm, kCount };

struct QualityFocalKD : FirstOrderFunction<QualityFocalKD> {
  static constexpr const char* kOp = "quality_focal_kd";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const OptT& weight,
                               double beta, c10::string_view normalize) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, norm] =
        op_handle<Forward>("kdops::quality_focal_kd").call(student, teacher, weight, beta, normalize);
    ctx->save_for_backward(in_saved_order<Saved>(
        {{kStudent, student}, {kTeacher, teacher}, {kWeight, saved_or_undefined(weight)}, {kNorm, norm}}));
    ctx->saved_data["beta"] = beta;
    ctx->mark_non_differentiable({norm});
    return {loss, norm};
  }

  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 1, "quality_focal_kd", "teacher_logits");
    variable_list out(5);
    if (ctx->needs_input_grad(0)) {
      const auto s = ctx->get_saved_variables();
      out[0] = op_handle<Backward>("kdops::quality_focal_kd_backward")
                   .call(grads[0], s[kStudent], s[kTeacher], optional_of(s[kWeight]), s[kNorm],
                         ctx->saved_data["beta"].toDouble());
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("quality_focal_kd",
         &autograd_kernel<QualityFocalKD, 2, const T&, const T&, const OptT&, double, c10::string_view>);
}

}  // namespace autograd
}  // namespace kdops
