// Schema of localization distillation (LD, docs/math.md §11). Kernels: cpu/ld_loss.cpp, cuda/ld_loss.cu.
// `norm` is Z (1, the number of rows or the sum of the weights, by `normalize`: "sum", "mean" or "weight");
// `row_stats` (rows, 6) holds each row's softmax statistics, cwd_loss's (math/cwd_loss.h), so the backward is
// one elementwise pass.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def(
      "ld_loss(Tensor student, Tensor teacher, Tensor? weight, float temperature, str normalize) -> (Tensor loss, "
      "Tensor norm, Tensor row_stats)");
  m.def(
      "ld_loss_backward(Tensor grad, Tensor student, Tensor teacher, Tensor? weight, Tensor norm, Tensor row_stats, "
      "float temperature) -> Tensor");
}
