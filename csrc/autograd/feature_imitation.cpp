// Autograd of kdops::feature_imitation (the Python twin for the Triton op: kdops/ops/feature_imitation.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using OptT = c10::optional<T>;
using Forward = std::tuple<T, T>(const T&, const T&, const OptT&, int64_t, int64_t);
using Backward = T(const T&, const T&, const T&, const OptT&, const T&, int64_t);
// The tensors the backward reads: kdops/ops/feature_imitation.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kMask, kNorm, kCount };

struct FeatureImitation : FirstOrderFunction<FeatureImitation> {
  static constexpr const char* kOp = "feature_imitation";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const OptT& mask,
                               int64_t loss_kind, int64_t normalize) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, norm] =
        op_handle<Forward>("kdops::feature_imitation").call(student, teacher, mask, loss_kind, normalize);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher},
                                                   {kMask, saved_or_undefined(mask)}, {kNorm, norm}}));
    ctx->saved_data["loss"] = loss_kind;
    ctx->mark_non_differentiable({norm});
    return {loss, norm};
  }

  // The loss depends on S - T only: the teacher's gradient is minus the student's. The mask is a constant.
  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    variable_list out(5);
    const bool need_student = ctx->needs_input_grad(0), need_teacher = ctx->needs_input_grad(1);
    if (!need_student && !need_teacher) return out;
    const auto s = ctx->get_saved_variables();
    T grad = op_handle<Backward>("kdops::feature_imitation_backward")
                 .call(grads[0], s[kStudent], s[kTeacher], optional_of(s[kMask]), s[kNorm],
                       ctx->saved_data["loss"].toInt());
    if (need_teacher) out[1] = -grad;
    if (need_student) out[0] = grad;
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("feature_imitation",
         &autograd_kernel<FeatureImitation, 2, const T&, const T&, const OptT&, int64_t, int64_t>);
}

}  // namespace autograd
}  // namespace kdops
