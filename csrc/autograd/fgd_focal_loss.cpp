// Autograd of kdops::fgd_focal_loss (the Python twin for the Triton op: kdops/ops/fgd_focal_loss.py).
#include "autograd.h"

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using Forward = std::tuple<T, T, T, T, T, T>(const T&, const T&, const T&, const T&, double, double, double, double);
using Backward = T(const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&,
                   double, double, double);
// The tensors the backward reads: kdops/ops/fgd_focal_loss.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kFg, kBg, kTeacherSpatial, kTeacherChannel, kPixelAttGrad, kChannelAttGrad, kCount };

struct FgdFocalLoss : FirstOrderFunction<FgdFocalLoss> {
  static constexpr const char* kOp = "fgd_focal_loss";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const T& fg, const T& bg,
                               double temperature, double alpha, double beta, double gamma) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, terms, t_spatial, t_channel, pixel_att, channel_att] =
        op_handle<Forward>("kdops::fgd_focal_loss").call(student, teacher, fg, bg, temperature, alpha, beta, gamma);
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher}, {kFg, fg}, {kBg, bg},
                                                   {kTeacherSpatial, t_spatial}, {kTeacherChannel, t_channel},
                                                   {kPixelAttGrad, pixel_att}, {kChannelAttGrad, channel_att}}));
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["gamma"] = gamma;
    ctx->mark_non_differentiable({t_spatial, t_channel, pixel_att, channel_att});
    return {loss, terms, t_spatial, t_channel, pixel_att, channel_att};
  }

  // The loss and its terms are differentiable (an unused one's gradient arrives as zeros); the box masks
  // are constants.
  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 1, "fgd_focal_loss", "teacher", kFgdTeacherWhy);
    variable_list out(8);
    if (!ctx->needs_input_grad(0)) return out;
    const auto s = ctx->get_saved_variables();
    const auto dtype = s[kTeacherSpatial].scalar_type();
    out[0] = op_handle<Backward>("kdops::fgd_focal_loss_backward")
                 .call(grads[0].to(dtype), grads[1].to(dtype), s[kStudent], s[kTeacher], s[kFg], s[kBg],
                       s[kTeacherSpatial], s[kTeacherChannel], s[kPixelAttGrad], s[kChannelAttGrad],
                       ctx->saved_data["alpha"].toDouble(), ctx->saved_data["beta"].toDouble(),
                       ctx->saved_data["gamma"].toDouble());
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("fgd_focal_loss",
         &autograd_kernel<FgdFocalLoss, 6, const T&, const T&, const T&, const T&, double, double, double, double>);
}

}  // namespace autograd
}  // namespace kdops
