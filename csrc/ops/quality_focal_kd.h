// Argument checks shared by the CPU and CUDA kernels of quality_focal_kd, and its `normalize` names.
#pragma once
#include <string_view>

#include "kdops/common.h"
#include "kdops/math/quality_focal_kd.h"

namespace kdops {

inline void check_quality_focal_kd_args(const at::Tensor& student, const at::Tensor& teacher,
                                        const c10::optional<at::Tensor>& weight, double beta) {
  const char* op = "kdops.quality_focal_kd";
  TORCH_CHECK(student.dim() == 2 && student.size(1) >= 1, op,
              ": student_logits must be a 2-D (rows, C) tensor with C >= 1, got shape ", student.sizes());
  TORCH_CHECK(at::isFloatingType(student.scalar_type()), op,
              ": student_logits must be float16, bfloat16, float32 or float64, got ", student.scalar_type());
  check_same(student, teacher, op, "student_logits", "teacher_logits");
  TORCH_CHECK(beta >= 0 && std::isfinite(beta), op, ": beta must be a number >= 0, got ", beta);
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == student.size(0), op, ": weight must have shape (rows,) = (",
                student.size(0), ",), got ", w.sizes());
    TORCH_CHECK(w.scalar_type() == acc_dtype(student.scalar_type()), op, ": weight must be ",
                acc_dtype(student.scalar_type()), " (the accumulation dtype), got ", w.scalar_type());
    TORCH_CHECK(w.device() == student.device(), op, ": weight must be on ", student.device(), ", got ", w.device());
  }
}

// The layout.h code of `normalize` (kdops/_layout.py QFKD_NORMALIZERS).
inline qfkd::Normalize parse_quality_focal_kd_normalize(c10::string_view name) {
  const std::string_view n(name.data(), name.size());
  if (n == "sum") return qfkd::Normalize::kSum;
  if (n == "mean") return qfkd::Normalize::kMean;
  TORCH_CHECK(n == "weight", "kdops.quality_focal_kd: normalize must be one of ('sum', 'mean', 'weight'), got '",
              std::string(n), "'");
  return qfkd::Normalize::kWeight;
}

}  // namespace kdops
