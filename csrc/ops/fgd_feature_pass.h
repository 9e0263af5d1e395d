// Argument checks of fgd_feature_pass (its CPU kernel: cpu/fgd_feature_pass.cpp).
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
  TORCH_CHECK(temperature > 0.0, op, ": temperature must be > 0, got ", temperature);
}

// saved: teacher_spatial, pixel_att_grad, probs_s, probs_t (N, H, W); teacher_channel, channel_att_grad (N, C).
inline void check_fgd_feature_pass_backward_args(at::TensorList grads, const at::Tensor& student,
                                                 const at::Tensor& teacher, const at::Tensor& fg, const at::Tensor& bg,
                                                 const at::Tensor& weight_s, const at::Tensor& weight_t,
                                                 const at::Tensor& ctx_s, const at::Tensor& ctx_t,
                                                 at::TensorList saved) {
  const char* op = "kdops.fgd_feature_pass_backward";
  check_fgd_features(student, teacher, op);
  const int64_t N = student.size(0), C = student.size(1), H = student.size(2), W = student.size(3);
  const std::vector<int64_t> pixels{N, H, W}, channels{N, C}, channel{C}, scalar{}, three{3};
  const std::vector<int64_t> grad_shapes[] = {scalar, three, channels, channels, scalar, channels};
  const char* grad_names[] = {"grad_loss", "grad_terms", "grad_ctx_s", "grad_ctx_t", "grad_diff_sq", "grad_diff_sum"};
  TORCH_CHECK(grads.size() == 6 && saved.size() == 6, op, ": expected 6 output gradients and 6 saved tensors");
  for (size_t i = 0; i < 6; ++i) check_side_tensor(grads[i], student, grad_shapes[i], op, grad_names[i]);
  check_side_tensor(fg, student, pixels, op, "fg");
  check_side_tensor(bg, student, pixels, op, "bg");
  check_side_tensor(weight_s, student, channel, op, "student_gc_weight");
  check_side_tensor(weight_t, student, channel, op, "teacher_gc_weight");
  check_side_tensor(ctx_s, student, channels, op, "ctx_s");
  check_side_tensor(ctx_t, student, channels, op, "ctx_t");
  const char* saved_names[] = {"teacher_spatial", "pixel_att_grad", "probs_s", "probs_t", "teacher_channel",
                               "channel_att_grad"};
  for (size_t i = 0; i < 6; ++i) check_side_tensor(saved[i], student, i < 4 ? pixels : channels, op, saved_names[i]);
}

}  // namespace kdops
