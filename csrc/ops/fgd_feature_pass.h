// Argument checks of fgd_feature_pass (its kernels: cpu/fgd_feature_pass.cpp, cuda/fgd_feature_pass.cu).
#pragma once
#include <vector>

#include "fgd_focal_loss.h"

namespace kdops {

inline void check_fgd_feature_pass_args(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& fg,
                                        const at::Tensor& bg, const at::Tensor& weight_s, const at::Tensor& bias_s,
                                        const at::Tensor& weight_t, const at::Tensor& bias_t, double temperature) {
  const char* op = "kdops.fgd_feature_pass";
  check_fgd_features(student, teacher, op);
  const std::vector<int64_t> pixels{student.size(0), student.size(2), student.size(3)};
  const std::vector<int64_t> channel{student.size(1)}, one{1};
  check_side_tensor(fg, student, pixels, op, "fg");
  check_side_tensor(bg, student, pixels, op, "bg");
  check_side_tensor(weight_s, student, channel, op, "student_gc_weight");
  check_side_tensor(bias_s, student, one, op, "student_gc_bias");
  check_side_tensor(weight_t, student, channel, op, "teacher_gc_weight");
  check_side_tensor(bias_t, student, one, op, "teacher_gc_bias");
  check_temperature(temperature, op, "temperature");
}

// The gradients of the six differentiable outputs, and the statistics the forward saved for the backward.
struct FeaturePassGrads {
  at::Tensor loss, terms, ctx_s, ctx_t, diff_sq, diff_sum;
};
struct FeaturePassSaved {
  at::Tensor teacher_spatial, teacher_channel, pixel_att_grad, channel_att_grad, probs_s, probs_t;
};

inline void check_fgd_feature_pass_backward_args(const FeaturePassGrads& g, const at::Tensor& student,
                                                 const at::Tensor& teacher, const at::Tensor& fg, const at::Tensor& bg,
                                                 const at::Tensor& weight_s, const at::Tensor& weight_t,
                                                 const at::Tensor& ctx_s, const at::Tensor& ctx_t,
                                                 const FeaturePassSaved& saved) {
  const char* op = "kdops.fgd_feature_pass_backward";
  check_fgd_features(student, teacher, op);
  const int64_t N = student.size(0), C = student.size(1), H = student.size(2), W = student.size(3);
  const std::vector<int64_t> pixels{N, H, W}, channels{N, C}, channel{C}, scalar{}, three{3};
  struct Named {
    const at::Tensor& t;
    const std::vector<int64_t>& shape;
    const char* name;
  };
  for (const Named& a : {Named{g.loss, scalar, "grad_loss"}, Named{g.terms, three, "grad_terms"},
                         Named{g.ctx_s, channels, "grad_ctx_s"}, Named{g.ctx_t, channels, "grad_ctx_t"},
                         Named{g.diff_sq, scalar, "grad_diff_sq"}, Named{g.diff_sum, channels, "grad_diff_sum"},
                         Named{fg, pixels, "fg"}, Named{bg, pixels, "bg"}, Named{weight_s, channel, "student_gc_weight"},
                         Named{weight_t, channel, "teacher_gc_weight"}, Named{ctx_s, channels, "ctx_s"},
                         Named{ctx_t, channels, "ctx_t"}, Named{saved.teacher_spatial, pixels, "teacher_spatial"},
                         Named{saved.teacher_channel, channels, "teacher_channel"},
                         Named{saved.pixel_att_grad, pixels, "pixel_att_grad"},
                         Named{saved.channel_att_grad, channels, "channel_att_grad"},
                         Named{saved.probs_s, pixels, "probs_s"}, Named{saved.probs_t, pixels, "probs_t"}})
    check_side_tensor(a.t, student, a.shape, op, a.name);
}

}  // namespace kdops
