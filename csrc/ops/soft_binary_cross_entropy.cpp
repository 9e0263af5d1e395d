// Schema of the binary (RPN objectness) weighted soft cross-entropy (docs/math.md §7).
// Kernels: cpu/soft_binary_cross_entropy.cpp, cuda/soft_binary_cross_entropy.cu. `norm` is the number of
// kept anchors; the backward recomputes everything elementwise from the logits.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def(
      "soft_binary_cross_entropy(Tensor student, Tensor teacher, Tensor? target, float pos_weight, float neg_weight, "
      "float temperature, float mu, int ignore_index) -> (Tensor loss, Tensor norm)");
  m.def(
      "soft_binary_cross_entropy_backward(Tensor grad, Tensor student, Tensor teacher, Tensor? target, Tensor norm, "
      "float pos_weight, float neg_weight, float temperature, float mu, int ignore_index) -> Tensor");
}
