// Schema of masked feature imitation (docs/math.md §5). Kernels: cpu/feature_imitation.cpp, cuda/feature_imitation.cu.
// loss: 0 = mse, 1 = l1. normalize: 0 = batch (N), 1 = mean (element count), 2 = mask (C * sum M).
// `norm` is the normaliser Z the forward divided by, kept for the backward.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("feature_imitation(Tensor student, Tensor teacher, Tensor? mask, int loss, int normalize) -> (Tensor loss, Tensor norm)");
  m.def(
      "feature_imitation_backward(Tensor grad, Tensor student, Tensor teacher, Tensor? mask, Tensor norm, int loss) "
      "-> Tensor");
}
