// Schema of quality-focal KD on sigmoid classification heads (docs/math.md §12).
// Kernels: cpu/quality_focal_kd.cpp, cuda/quality_focal_kd.cu. `norm` is Z (1, rows or the sum of the
// weights); the backward recomputes everything elementwise from the logits.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("quality_focal_kd(Tensor student, Tensor teacher, Tensor? weight, float beta, str normalize) -> "
        "(Tensor loss, Tensor norm)");
  m.def("quality_focal_kd_backward(Tensor grad, Tensor student, Tensor teacher, Tensor? weight, Tensor norm, "
        "float beta) -> Tensor");
}
