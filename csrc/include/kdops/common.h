// Shared by the CPU (.cpp) and CUDA (.cu) kernels: qualifiers and small checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>

#include <limits>

#if defined(__CUDACC__)
#define KDOPS_HD __host__ __device__ __forceinline__
#else
#define KDOPS_HD inline
#endif

namespace kdops {

// Accumulation type: float for half/bfloat16/float, double for double (docs/math.md §0: accumulate in fp32/fp64).
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks used by every op; `op` and `arg` name what the caller passed.
inline void check_feature(const at::Tensor& t, const char* op, const char* arg) {
  TORCH_CHECK(t.dim() == 4, op, ": ", arg, " must be a 4-D (N, C, H, W) tensor, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", arg,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op, const char* an, const char* bn) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", an, " and ", bn, " must have the same shape, got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", an, " and ", bn, " must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": ", an, " and ", bn, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

// Every temperature argument: a finite number >= kMinTemperature; below it 1/T (and a KL's T^2) leave float32's
// range (docs/math.md §0; kdops/_checks.py: MIN_TEMPERATURE and the same message).
constexpr double kMinTemperature = 1e-30;

inline void check_temperature(double value, const char* op, const char* arg) {
  TORCH_CHECK(value >= kMinTemperature && value <= std::numeric_limits<double>::max(), op, ": ", arg,
              " must be a finite number >= 1e-30 (below it 1/", arg, " leaves float32's range), got ", value);
}

// A backward's scalar input (the loss's gradient, a saved normaliser): one element, on the features'
// device (a CPU scalar read by a CUDA kernel would be an illegal address that poisons the context).
inline void check_backward_scalar(const at::Tensor& s, const at::Tensor& like, const char* op, const char* arg) {
  TORCH_CHECK(s.numel() == 1, op, ": ", arg, " must have one element, got shape ", s.sizes());
  TORCH_CHECK(s.device() == like.device(), op, ": ", arg, " must be on ", like.device(), ", got ", s.device());
}

}  // namespace kdops
