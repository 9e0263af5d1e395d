// Argument checks shared by the CPU and CUDA kernels of pkd_loss.
#pragma once
#include "kdops/common.h"
#include "kdops/math/pkd_loss.h"

namespace kdops {

inline void check_pkd_loss_args(const at::Tensor& student, const at::Tensor& teacher) {
  const char* op = "kdops.pkd_loss";
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  TORCH_CHECK(student.numel() > 0, op, ": student must not be empty, got shape ", student.sizes());
}

// What the backward adds to the forward's checks: the scalar and the saved per-channel statistics.
inline void check_pkd_loss_backward_args(const at::Tensor& grad_out, const at::Tensor& student,
                                         const at::Tensor& channel_stats) {
  using pkd::kStats;
  check_backward_scalar(grad_out, student, "kdops.pkd_loss_backward", "grad");
  TORCH_CHECK(channel_stats.dim() == 2 && channel_stats.size(0) == student.size(1) &&
                  channel_stats.size(1) == kStats && channel_stats.scalar_type() == acc_dtype(student.scalar_type()) &&
                  channel_stats.device() == student.device(),
              "kdops.pkd_loss_backward: channel_stats must be the forward's (C, ", kStats, ") statistics, on the student's device");
}

}  // namespace kdops
