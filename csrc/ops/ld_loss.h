// Argument checks shared by the CPU and CUDA kernels of ld_loss.
#pragma once
#include "kdops/common.h"
#include "kdops/math/ld_loss.h"

namespace kdops {

inline void check_ld_loss_args(const at::Tensor& student, const at::Tensor& teacher,
                               const c10::optional<at::Tensor>& weight, double temperature) {
  const char* op = "kdops.ld_loss";
  TORCH_CHECK(student.dim() == 2, op, ": student_logits must be a 2-D (rows, bins) tensor, got shape ",
              student.sizes());
  TORCH_CHECK(at::isFloatingType(student.scalar_type()), op,
              ": student_logits must be float16, bfloat16, float32 or float64, got ", student.scalar_type());
  check_same(student, teacher, op, "student_logits", "teacher_logits");
  TORCH_CHECK(student.size(1) >= 1, op, ": the logits need at least one bin, got shape ", student.sizes());
  check_temperature(temperature, op, "temperature");
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == student.size(0), op, ": weight must have shape (rows,) = (",
                student.size(0), ",), got ", w.sizes());
    TORCH_CHECK(w.scalar_type() == acc_dtype(student.scalar_type()), op, ": weight must be ",
                acc_dtype(student.scalar_type()), " (the accumulation dtype), got ", w.scalar_type());
    TORCH_CHECK(w.device() == student.device(), op, ": weight must be on ", student.device(), ", got ", w.device());
  }
}

// The layout.h code of `normalize` ("sum", "mean" or "weight", kdops/_layout.py LD_NORMALIZERS).
inline ld::Normalize ld_normalize_code(c10::string_view normalize) {
  if (normalize == "sum") return ld::kSum;
  if (normalize == "mean") return ld::kMean;
  TORCH_CHECK(normalize == "weight", "kdops.ld_loss: normalize must be one of ('sum', 'mean', 'weight'), got '",
              normalize, "'");
  return ld::kWeight;
}

// What the backward adds to the forward's checks: the scalars and the saved per-row statistics.
inline void check_ld_loss_backward_args(const at::Tensor& grad_out, const at::Tensor& student, const at::Tensor& norm,
                                        const at::Tensor& row_stats) {
  using cwd::kStats;
  check_backward_scalar(grad_out, student, "kdops.ld_loss_backward", "grad");
  check_backward_scalar(norm, student, "kdops.ld_loss_backward", "norm");
  TORCH_CHECK(row_stats.dim() == 2 && row_stats.size(0) == student.size(0) && row_stats.size(1) == kStats &&
                  row_stats.scalar_type() == acc_dtype(student.scalar_type()) &&
                  row_stats.device() == student.device(),
              "kdops.ld_loss_backward: row_stats must be the forward's (rows, ", kStats,
              ") statistics, on the student's device");
}

}  // namespace kdops
