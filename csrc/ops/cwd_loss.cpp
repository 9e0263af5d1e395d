// Schema of channel-wise distillation (CWD, docs/math.md §6). Kernels: cpu/cwd_loss.cpp, cuda/cwd_loss.cu.
// `row_stats` (N*C, 6) holds each (n, c) row's softmax statistics (math/cwd_loss.h), so the backward is
// one elementwise pass.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("cwd_loss(Tensor student, Tensor teacher, float tau) -> (Tensor loss, Tensor row_stats)");
  m.def("cwd_loss_backward(Tensor grad, Tensor student, Tensor teacher, Tensor row_stats, float tau) -> Tensor");
}
