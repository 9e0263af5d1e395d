// Argument checks shared by the CPU and CUDA kernels of relation_mse.
#pragma once
#include <vector>

#include "side_tensor.h"

namespace kdops {

inline void check_relation_mse_args(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& delta_s,
                                    const at::Tensor& delta_t, const char* op) {
  check_feature(student, op, "student");
  check_same(student, teacher, op, "student", "teacher");
  const std::vector<int64_t> channels{student.size(0), student.size(1)};
  check_side_tensor(delta_s, student, channels, op, "delta_s");
  check_side_tensor(delta_t, student, channels, op, "delta_t");
}

}  // namespace kdops
