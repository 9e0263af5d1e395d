// Autograd of kdops::bounded_regression (the Python twin for the Triton op: kdops/ops/bounded_regression.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using OptT = c10::optional<T>;
using Forward = std::tuple<T, T>(const T&, const T&, const T&, const OptT&, double);
using Backward = T(const T&, const T&, const T&, const T&, const OptT&, const T&, double);
// The tensors the backward reads: kdops/ops/bounded_regression.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kTarget, kWeight, kNorm, kCount };

struct BoundedRegression : FirstOrderFunction<BoundedRegression> {
  static constexpr const char* kOp = "bounded_regression";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const T& target,
                               const OptT& weight, double margin) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, norm] =
        op_handle<Forward>("kdops::bounded_regression").call(student, teacher, target, weight, margin);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher}, {kTarget, target},
                                                   {kWeight, saved_or_undefined(weight)}, {kNorm, norm}}));
    ctx->saved_data["margin"] = margin;
    ctx->mark_non_differentiable({norm});
    return {loss, norm};
  }

  // The teacher only moves the bound, a step function of it: its gradient is 0 almost everywhere (none).
  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 2, "bounded_regression", "target");
    variable_list out(5);
    if (ctx->needs_input_grad(0)) {
      const auto s = ctx->get_saved_variables();
      out[0] = op_handle<Backward>("kdops::bounded_regression_backward")
                   .call(grads[0], s[kStudent], s[kTeacher], s[kTarget], optional_of(s[kWeight]), s[kNorm],
                         ctx->saved_data["margin"].toDouble());
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("bounded_regression",
         &autograd_kernel<BoundedRegression, 2, const T&, const T&, const T&, const OptT&, double>);
}

}  // namespace autograd
}  // namespace kdops
