// Autograd of kdops::fgd_feature_pass (the Python twin for the Triton op: kdops/ops/fgd_feature_pass.py).
#include "autograd.h"

#include <ATen/ops/zeros.h>

namespace kdops {
namespace autograd {
namespace {

using T = at::Tensor;
using Forward = std::tuple<T, T, T, T, T, T, T, T, T, T, T, T>(const T&, const T&, const T&, const T&, const T&,
                                                               const T&, const T&, const T&, double, double, double,
                                                               double);
using Backward = std::tuple<T, T, T>(const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&,
                                     const T&, const T&, const T&, const T&, const T&, const T&, const T&, const T&,
                                     const T&, const T&, const T&, const T&, double, double, double);
// The tensors the backward reads: kdops/ops/fgd_feature_pass.py's `saved`, in its order (test_registry.py).
enum Saved { kStudent, kTeacher, kFg, kBg, kStudentGcWeight, kTeacherGcWeight, kCtxS, kCtxT, kTeacherSpatial,
             kTeacherChannel, kPixelAttGrad, kChannelAttGrad, kProbsS, kProbsT, kCount };

struct FgdFeaturePass : FirstOrderFunction<FgdFeaturePass> {
  static constexpr const char* kOp = "fgd_feature_pass";

  static variable_list forward(AutogradContext* ctx, const T& student, const T& teacher, const T& fg, const T& bg,
                               const T& weight_s, const T& bias_s, const T& weight_t, const T& bias_t,
                               double temperature, double alpha, double beta, double gamma) {
    at::AutoDispatchBelowADInplaceOrView below;
    const auto out = op_handle<Forward>("kdops::fgd_feature_pass")
                         .call(student, teacher, fg, bg, weight_s, bias_s, weight_t, bias_t, temperature, alpha, beta,
                               gamma);
    const auto& [loss, terms, ctx_s, ctx_t, diff_sq, diff_sum, t_spatial, t_channel, pixel_att, channel_att, probs_s,
                 probs_t] = out;
    ctx->save_for_backward(in_saved_order<Saved>({{kStudent, student}, {kTeacher, teacher}, {kFg, fg}, {kBg, bg},
                                                   {kStudentGcWeight, weight_s}, {kTeacherGcWeight, weight_t},
                                                   {kCtxS, ctx_s}, {kCtxT, ctx_t}, {kTeacherSpatial, t_spatial},
                                                   {kTeacherChannel, t_channel}, {kPixelAttGrad, pixel_att},
                                                   {kChannelAttGrad, channel_att}, {kProbsS, probs_s},
                                                   {kProbsT, probs_t}}));
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["gamma"] = gamma;
    ctx->mark_non_differentiable({t_spatial, t_channel, pixel_att, channel_att, probs_s, probs_t});
    return {loss, terms, ctx_s, ctx_t, diff_sq, diff_sum, t_spatial, t_channel, pixel_att, channel_att, probs_s, probs_t};
  }

  // Unused outputs arrive as zeros (materialised: they are all small). The box masks are constants and the
  // biases only shift every logit of an image, so their gradients are exactly zero.
  static variable_list gradients(AutogradContext* ctx, variable_list grads) {
    check_no_grad(ctx, 1, "fgd_feature_pass", "teacher", kFgdTeacherWhy);
    const auto s = ctx->get_saved_variables();
    variable_list out(12);
    const bool need_student = ctx->needs_input_grad(0), need_ws = ctx->needs_input_grad(4),
               need_wt = ctx->needs_input_grad(6);
    if (ctx->needs_input_grad(5)) out[5] = at::zeros({1}, s[kStudentGcWeight].options());
    if (ctx->needs_input_grad(7)) out[7] = at::zeros({1}, s[kTeacherGcWeight].options());
    if (!(need_student || need_ws || need_wt)) return out;
    const auto dtype = s[kCtxS].scalar_type();
    // The gradients of loss, terms, ctx_s, ctx_t, diff_sq, diff_sum; the other six outputs are saved statistics.
    const auto g = [&](size_t i) { return grads[i].to(dtype); };
    auto [grad_student, grad_ws, grad_wt] =
        op_handle<Backward>("kdops::fgd_feature_pass_backward")
            .call(g(0), g(1), g(2), g(3), g(4), g(5), s[kStudent], s[kTeacher], s[kFg], s[kBg], s[kStudentGcWeight],
                  s[kTeacherGcWeight], s[kCtxS], s[kCtxT], s[kTeacherSpatial], s[kTeacherChannel], s[kPixelAttGrad],
                  s[kChannelAttGrad], s[kProbsS], s[kProbsT], ctx->saved_data["alpha"].toDouble(),
                  ctx->saved_data["beta"].toDouble(), ctx->saved_data["gamma"].toDouble());
    if (need_student) out[0] = grad_student;
    if (need_ws) out[4] = grad_ws;
    if (need_wt) out[6] = grad_wt;
    return out;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(kdops, Autograd, m) {
  m.impl("fgd_feature_pass", &autograd_kernel<FgdFeaturePass, 12, const T&, const T&, const T&, const T&, const T&,
                                              const T&, const T&, const T&, double, double, double, double>);
}

}  // namespace autograd
}  // namespace kdops
