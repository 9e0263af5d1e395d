// Argument checks shared by the CPU and CUDA kernels of bounded_regression.
#pragma once
#include "kdops/common.h"

namespace kdops {

inline void check_bounded_regression_args(const at::Tensor& student, const at::Tensor& teacher,
                                          const at::Tensor& target, const c10::optional<at::Tensor>& weight) {
  const char* op = "kdops.bounded_regression";
  TORCH_CHECK(student.dim() == 2, op, ": student_reg must be a 2-D (rows, D) tensor, got shape ", student.sizes());
  TORCH_CHECK(at::isFloatingType(student.scalar_type()), op,
              ": student_reg must be float16, bfloat16, float32 or float64, got ", student.scalar_type());
  check_same(student, teacher, op, "student_reg", "teacher_reg");
  check_same(student, target, op, "student_reg", "target");
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == student.size(0), op, ": weight must have shape (rows,) = (",
                student.size(0), ",), got ", w.sizes());
    TORCH_CHECK(w.scalar_type() == acc_dtype(student.scalar_type()), op, ": weight must be ",
                acc_dtype(student.scalar_type()), " (the accumulation dtype), got ", w.scalar_type());
    TORCH_CHECK(w.device() == student.device(), op, ": weight must be on ", student.device(), ", got ", w.device());
  }
}

}  // namespace kdops
