// Schema of Pearson-correlation distillation (PKD, docs/math.md §6). Kernels: cpu/pkd_loss.cpp, cuda/pkd_loss.cu.
// `channel_stats` (C, 5) = (mean_s, std_s, mean_t, std_t, D_c) per channel (math/pkd_loss.h). The loss is
// symmetric in S and T, so the teacher's gradient is the backward with the two sides swapped.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("pkd_loss(Tensor student, Tensor teacher) -> (Tensor loss, Tensor channel_stats)");
  m.def("pkd_loss_backward(Tensor grad, Tensor student, Tensor teacher, Tensor channel_stats) -> Tensor");
}
