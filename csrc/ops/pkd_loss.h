// Argument checks shared by the CPU and CUDA kernels of pkd_loss.
#pragma once
#include "kdops/common.h"

namespace kdops {

inline void check_pkd_loss_args(const at::Tensor& student, const at::Tensor& teacher) {
  const char* op = "kdops.pkd_loss";
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  TORCH_CHECK(student.numel() > 0, op, ": student must not be empty, got shape ", student.sizes());
}

}  // namespace kdops
