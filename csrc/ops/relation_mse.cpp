// Schema of the FGD global (relation) loss (docs/math.md §4). Kernels: cpu/relation_mse.cpp, cuda/relation_mse.cu.
// loss = sum (S + delta_s[n, c] - T - delta_t[n, c])^2 / N, deltas (N, C) in the accumulation dtype.
// row_sum[n, c] = sum_j (S + delta_s - T - delta_t), kept so the delta gradients need no pass:
// dL/ddelta_s = 2 grad / N * row_sum = -dL/ddelta_t. The backward op writes dL/dS (= -dL/dT).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("relation_mse(Tensor student, Tensor teacher, Tensor delta_s, Tensor delta_t) -> (Tensor loss, Tensor row_sum)");
  m.def("relation_mse_backward(Tensor grad, Tensor student, Tensor teacher, Tensor delta_s, Tensor delta_t) -> Tensor");
}
