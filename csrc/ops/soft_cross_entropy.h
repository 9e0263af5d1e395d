// Argument checks shared by the CPU and CUDA kernels of soft_cross_entropy.
#pragma once
#include "kdops/common.h"
#include "kdops/math/soft_cross_entropy.h"

namespace kdops {

inline void check_soft_cross_entropy_args(const at::Tensor& student, const at::Tensor& teacher,
                                          const c10::optional<at::Tensor>& class_weight,
                                          const c10::optional<at::Tensor>& target, double temperature) {
  const char* op = "kdops.soft_cross_entropy";
  TORCH_CHECK(student.dim() == 2, op, ": student_logits must be a 2-D (rows, classes) tensor, got shape ",
              student.sizes());
  TORCH_CHECK(at::isFloatingType(student.scalar_type()), op,
              ": student_logits must be float16, bfloat16, float32 or float64, got ", student.scalar_type());
  check_same(student, teacher, op, "student_logits", "teacher_logits");
  check_temperature(temperature, op, "temperature");
  if (class_weight.has_value()) {
    const auto& w = *class_weight;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == student.size(1), op, ": class_weight must have shape (classes,) = (",
                student.size(1), ",), got ", w.sizes());
    TORCH_CHECK(w.scalar_type() == acc_dtype(student.scalar_type()), op, ": class_weight must be ",
                acc_dtype(student.scalar_type()), " (the accumulation dtype), got ", w.scalar_type());
    TORCH_CHECK(w.device() == student.device(), op, ": class_weight must be on ", student.device(), ", got ",
                w.device());
  }
  if (target.has_value()) {
    const auto& y = *target;
    TORCH_CHECK(y.dim() == 1 && y.size(0) == student.size(0), op, ": target must have shape (rows,) = (",
                student.size(0), ",), got ", y.sizes());
    TORCH_CHECK(y.scalar_type() == at::kLong, op, ": target must be int64, got ", y.scalar_type());
    TORCH_CHECK(y.device() == student.device(), op, ": target must be on ", student.device(), ", got ", y.device());
  }
}

// What the backward adds to the forward's checks: the scalars and the saved per-row statistics.
inline void check_soft_cross_entropy_backward_args(const at::Tensor& grad_out, const at::Tensor& student,
                                                   const at::Tensor& norm, const at::Tensor& row_stats) {
  using soft_ce::kStats;
  check_backward_scalar(grad_out, student, "kdops.soft_cross_entropy_backward", "grad");
  check_backward_scalar(norm, student, "kdops.soft_cross_entropy_backward", "norm");
  TORCH_CHECK(row_stats.dim() == 2 && row_stats.size(0) == student.size(0) && row_stats.size(1) == kStats &&
                  row_stats.scalar_type() == acc_dtype(student.scalar_type()) &&
                  row_stats.device() == student.device(),
              "kdops.soft_cross_entropy_backward: row_stats must be the forward's (rows, ", kStats, ") statistics, on the student's device");
}

}  // namespace kdops
