// Argument checks shared by the CPU and CUDA kernels of cwd_loss.
#pragma once
#include <limits>

#include "kdops/common.h"

namespace kdops {

constexpr double kMinTau = 1e-30;  // kdops/ops/cwd_loss.py: MIN_TAU

inline void check_cwd_loss_args(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  const char* op = "kdops.cwd_loss";
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  TORCH_CHECK(student.size(2) * student.size(3) > 0, op, ": student must have H*W >= 1, got shape ", student.sizes());
  TORCH_CHECK(tau >= kMinTau && tau <= std::numeric_limits<double>::max(), op, ": tau must be a finite number >= ",
              kMinTau, " (below it 1/tau and tau^2 KL leave float32's range), got ", tau);
}

}  // namespace kdops
