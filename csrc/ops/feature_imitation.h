// Argument checks shared by the CPU and CUDA kernels of feature_imitation.
#pragma once
#include "kdops/common.h"

namespace kdops {

inline void check_feature_imitation_args(const at::Tensor& student, const at::Tensor& teacher,
                                         const c10::optional<at::Tensor>& mask, int64_t loss, int64_t normalize) {
  const char* op = "kdops.feature_imitation";
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  TORCH_CHECK(loss == 0 || loss == 1, op, ": loss must be 0 (mse) or 1 (l1), got ", loss);
  TORCH_CHECK(normalize >= 0 && normalize <= 2, op, ": normalize must be 0 (batch), 1 (mean) or 2 (mask), got ",
              normalize);
  if (mask.has_value()) {
    const auto& m = *mask;
    TORCH_CHECK(m.dim() == 3 && m.size(0) == student.size(0) && m.size(1) == student.size(2) &&
                    m.size(2) == student.size(3),
                op, ": mask must have shape (N, H, W) = (", student.size(0), ", ", student.size(2), ", ",
                student.size(3), "), got ", m.sizes());
    TORCH_CHECK(m.scalar_type() == student.scalar_type(), op, ": mask must have the student's dtype ",
                student.scalar_type(), ", got ", m.scalar_type());
    TORCH_CHECK(m.device() == student.device(), op, ": mask must be on the student's device ", student.device(),
                ", got ", m.device());
  }
}

}  // namespace kdops
