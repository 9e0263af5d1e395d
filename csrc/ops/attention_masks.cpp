// Schema of the FGD attention masks (docs/math.md §1). Kernels: cpu/attention_masks.cpp, cuda/attention_masks.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("attention_masks(Tensor feat, float temperature) -> (Tensor spatial, Tensor channel)");
  m.def(
      "attention_masks_backward(Tensor grad_spatial, Tensor grad_channel, Tensor feat, Tensor spatial, "
      "Tensor channel, float temperature) -> Tensor");
}
