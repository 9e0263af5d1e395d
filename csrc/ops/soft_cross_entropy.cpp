// Schema of the class-weighted soft cross-entropy (docs/math.md §7). Kernels: cpu/soft_cross_entropy.cpp,
// cuda/soft_cross_entropy.cu. `norm` is the number of kept rows; `row_stats` (rows, 6) holds what the
// backward needs to rebuild both softmaxes without another reduction (see math/soft_cross_entropy.h).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def(
      "soft_cross_entropy(Tensor student, Tensor teacher, Tensor? class_weight, Tensor? target, float temperature, "
      "float mu, int ignore_index) -> (Tensor loss, Tensor norm, Tensor row_stats)");
  m.def(
      "soft_cross_entropy_backward(Tensor grad, Tensor student, Tensor teacher, Tensor? class_weight, "
      "Tensor? target, Tensor norm, Tensor row_stats, float temperature, float mu, int ignore_index) -> Tensor");
}
