// Autograd of kdops::pkd_loss (the Python twin for the Triton op: kdops/ops/pkd_loss.py).
#include "autograd.h"

#include <ATen/ops/cat.h>

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using Forward = std::tuple<T, T>(const T&, const T&);
using Backward = T(const T&, const T&, const T&, const T&);
// The tensors the backward reads: kdops/ops/pkd_loss.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kChannelStats, kCount };

struct PkdLoss : FirstOrderFunction<PkdLoss> {
  static constexpr const char* kOp = "pkd_loss";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, stats] = op_handle<Forward>("kdops::pkd_loss").call(student, teacher);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher}, {kChannelStats, stats}}));
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  // The loss is symmetric in S and T: the teacher's gradient is the same formula, sides swapped.
  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto& backward_op = op_handle<Backward>("kdops::pkd_loss_backward");
    variable_list out(2);
    if (ctx->needs_input_grad(0)) out[0] = backward_op.call(grads[0], s[kStudent], s[kTeacher], s[kChannelStats]);
    if (ctx->needs_input_grad(1)) {
      // The statistics seen from the teacher's side: (mean_S, std_S, mean_T, std_T, sq) -> (mean_T, std_T, ...).
      const T& stats = s[kChannelStats];
      const T swapped = at::cat({stats.narrow(1, 2, 2), stats.narrow(1, 0, 2), stats.narrow(1, 4, 1)}, 1);
      out[1] = backward_op.call(grads[0], s[kTeacher], s[kStudent], swapped);
    }
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) { m.impl("pkd_loss", &autograd_kernel<PkdLoss, 2, const T&, const T&>); }

}  // namespace autograd
}  // namespace kdops
