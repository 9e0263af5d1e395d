// Argument checks shared by the CPU and CUDA kernels of cwd_loss.
#pragma once
#include "kdops/common.h"

namespace kdops {

inline void check_cwd_loss_args(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  const char* op = "kdops.cwd_loss";
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  TORCH_CHECK(student.size(2) * student.size(3) > 0, op, ": student must have H*W >= 1, got shape ", student.sizes());
  TORCH_CHECK(tau > 0, op, ": tau must be > 0, got ", tau);
}

}  // namespace kdops
