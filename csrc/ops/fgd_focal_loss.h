// Argument checks shared by the CPU and CUDA kernels of fgd_focal_loss.
#pragma once
#include <vector>

#include "side_tensor.h"

namespace kdops {

inline void check_fgd_features(const at::Tensor& student, const at::Tensor& teacher, const char* op) {
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  TORCH_CHECK(student.size(1) > 0 && student.size(2) * student.size(3) > 0, op,
              ": student must have C >= 1 and H*W >= 1, got shape ", student.sizes());
}

inline void check_fgd_focal_loss_args(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& fg,
                                      const at::Tensor& bg, double temperature) {
  const char* op = "kdops.fgd_focal_loss";
  check_fgd_features(student, teacher, op);
  const std::vector<int64_t> pixels{student.size(0), student.size(2), student.size(3)};
  check_side_tensor(fg, student, pixels, op, "fg");
  check_side_tensor(bg, student, pixels, op, "bg");
  check_temperature(temperature, op, "temperature");
}

inline void check_fgd_focal_loss_backward_args(const at::Tensor& grad_loss, const at::Tensor& grad_terms,
                                               const at::Tensor& student, const at::Tensor& teacher,
                                               const at::Tensor& fg, const at::Tensor& bg,
                                               const at::Tensor& teacher_spatial, const at::Tensor& teacher_channel,
                                               const at::Tensor& pixel_att_grad,
                                               const at::Tensor& channel_att_grad) {
  const char* op = "kdops.fgd_focal_loss_backward";
  check_fgd_features(student, teacher, op);
  const int64_t N = student.size(0), C = student.size(1), H = student.size(2), W = student.size(3);
  const std::vector<int64_t> pixels{N, H, W}, channels{N, C};
  check_side_tensor(fg, student, pixels, op, "fg");
  check_side_tensor(bg, student, pixels, op, "bg");
  check_side_tensor(teacher_spatial, student, pixels, op, "teacher_spatial");
  check_side_tensor(pixel_att_grad, student, pixels, op, "pixel_att_grad");
  check_side_tensor(teacher_channel, student, channels, op, "teacher_channel");
  check_side_tensor(channel_att_grad, student, channels, op, "channel_att_grad");
  TORCH_CHECK(grad_loss.numel() == 1 && grad_terms.numel() == 3, op,
              ": grad_loss must have 1 element and grad_terms 3, got ", grad_loss.sizes(), " and ",
              grad_terms.sizes());
  TORCH_CHECK(grad_loss.device() == student.device() && grad_terms.device() == student.device(), op,
              ": grad_loss and grad_terms must be on the features' device ", student.device());
}

}  // namespace kdops
