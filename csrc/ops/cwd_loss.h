// Argument checks shared by the CPU and CUDA kernels of cwd_loss.
#pragma once
#include "kdops/common.h"
#include "kdops/math/cwd_loss.h"

namespace kdops {

inline void check_cwd_loss_args(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  const char* op = "kdops.cwd_loss";
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  TORCH_CHECK(student.size(2) * student.size(3) > 0, op, ": student must have H*W >= 1, got shape ", student.sizes());
  check_temperature(tau, op, "tau");
}

// What the backward adds to the forward's checks: the scalar and the saved per-row statistics.
inline void check_cwd_loss_backward_args(const at::Tensor& grad_out, const at::Tensor& student,
                                         const at::Tensor& row_stats) {
  using cwd::kStats;
  check_backward_scalar(grad_out, student, "kdops.cwd_loss_backward", "grad");
  TORCH_CHECK(row_stats.dim() == 2 && row_stats.size(0) == student.size(0) * student.size(1) &&
                  row_stats.size(1) == kStats && row_stats.scalar_type() == acc_dtype(student.scalar_type()) &&
                  row_stats.device() == student.device(),
              "kdops.cwd_loss_backward: row_stats must be the forward's (N*C, ", kStats,
              ") statistics, on the student's device");
}

}  // namespace kdops
