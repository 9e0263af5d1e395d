// Argument checks shared by the CPU and CUDA kernels of soft_binary_cross_entropy.
#pragma once
#include "kdops/common.h"

namespace kdops {

inline void check_soft_binary_cross_entropy_args(const at::Tensor& student, const at::Tensor& teacher,
                                                 const c10::optional<at::Tensor>& target, double temperature) {
  const char* op = "kdops.soft_binary_cross_entropy";
  TORCH_CHECK(at::isFloatingType(student.scalar_type()), op,
              ": student_logits must be float16, bfloat16, float32 or float64, got ", student.scalar_type());
  check_same(student, teacher, op, "student_logits", "teacher_logits");
  check_temperature(temperature, op, "temperature");
  if (target.has_value()) {
    const auto& y = *target;
    TORCH_CHECK(y.sizes() == student.sizes(), op, ": target must have the logits' shape ", student.sizes(), ", got ",
                y.sizes());
    TORCH_CHECK(y.scalar_type() == at::kLong, op, ": target must be int64, got ", y.scalar_type());
    TORCH_CHECK(y.device() == student.device(), op, ": target must be on ", student.device(), ", got ", y.device());
  }
}

}  // namespace kdops
