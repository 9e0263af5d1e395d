// Autograd of kdops::relation_mse (the Python twin for the Triton op: kdops/ops/relation_mse.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using Forward = std::tuple<T, T>(const T&, const T&, const T&, const T&);
using Backward = T(const T&, const T&, const T&, const T&, const T&);
// The tensors the backward reads: kdops/ops/relation_mse.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kDeltaS, kDeltaT, kRowSum, kCount };

struct RelationMse : FirstOrderFunction<RelationMse> {
  static constexpr const char* kOp = "relation_mse";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const T& delta_s,
                               const T& delta_t) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, row_sum] = op_handle<Forward>("kdops::relation_mse").call(student, teacher, delta_s, delta_t);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher}, {kDeltaS, delta_s},
                                                   {kDeltaT, delta_t}, {kRowSum, row_sum}}));
    ctx->mark_non_differentiable({row_sum});
    return {loss, row_sum};
  }

  // The loss depends on (S + delta_s) - (T + delta_t): the teacher-side gradients are the negatives.
  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const T& grad = grads[0];
    variable_list out(4);
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
      const T grad_feat = op_handle<Backward>("kdops::relation_mse_backward")
                              .call(grad, s[kStudent], s[kTeacher], s[kDeltaS], s[kDeltaT]);
      if (ctx->needs_input_grad(1)) out[1] = -grad_feat;
      if (ctx->needs_input_grad(0)) out[0] = grad_feat;
    }
    if (ctx->needs_input_grad(2) || ctx->needs_input_grad(3)) {
      // dL/ddelta_s[n, c] = 2 grad / N * sum_hw (S + delta_s - T - delta_t): no pass over the features.
      const T& row_sum = s[kRowSum];
      const double scale = 2.0 / static_cast<double>(std::max<int64_t>(s[kStudent].size(0), 1));
      const T grad_delta = grad.to(row_sum.scalar_type()).mul(scale).mul(row_sum);
      if (ctx->needs_input_grad(3)) out[3] = -grad_delta;
      if (ctx->needs_input_grad(2)) out[2] = grad_delta;
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("relation_mse",
         &autograd_kernel<RelationMse, 2, const T&, const T&, const T&, const T&>);
}

}  // namespace autograd
}  // namespace kdops
