// Schema of the teacher-bounded L2 regression loss (docs/math.md §7) on (rows, D) tensors.
// Kernels: cpu/bounded_regression.cpp, cuda/bounded_regression.cu. `norm` is Z (rows, or the number of
// rows with weight > 0); the backward recomputes each row's bound from the inputs.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def(
      "bounded_regression(Tensor student, Tensor teacher, Tensor target, Tensor? weight, float margin) "
      "-> (Tensor loss, Tensor norm)");
  m.def(
      "bounded_regression_backward(Tensor grad, Tensor student, Tensor teacher, Tensor target, Tensor? weight, "
      "Tensor norm, float margin) -> Tensor");
}
