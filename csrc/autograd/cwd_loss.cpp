// Autograd of kdops::cwd_loss (the Python twin for the Triton op: kdops/ops/cwd_loss.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using Forward = std::tuple<T, T>(const T&, const T&, double);
using Backward = T(const T&, const T&, const T&, const T&, double);
// The tensors the backward reads: kdops/ops/cwd_loss.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kRowStats, kCount };

struct CwdLoss : FirstOrderFunction<CwdLoss> {
  static constexpr const char* kOp = "cwd_loss";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, double tau) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, row_stats] = op_handle<Forward>("kdops::cwd_loss").call(student, teacher, tau);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher}, {kRowStats, row_stats}}));
    ctx->saved_data["tau"] = tau;
    ctx->mark_non_differentiable({row_stats});
    return {loss, row_stats};
  }

  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 1, "cwd_loss", "teacher");
    variable_list out(3);
    if (ctx->needs_input_grad(0)) {
      const auto s = ctx->get_saved_variables();
      out[0] = op_handle<Backward>("kdops::cwd_loss_backward")
                   .call(grads[0], s[kStudent], s[kTeacher], s[kRowStats], ctx->saved_data["tau"].toDouble());
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("cwd_loss",
         &autograd_kernel<CwdLoss, 2, const T&, const T&, double>);
}

}  // namespace autograd
}  // namespace kdops
