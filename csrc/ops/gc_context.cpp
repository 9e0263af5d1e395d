// Schema of the GcBlock context pooling (docs/math.md §4). Kernels: cpu/gc_context.cpp, cuda/gc_context.cu.
// weight (C,) and bias (1,) are the 1x1 conv C -> 1, in the accumulation dtype of feat.
// context[n, c] = sum_j softmax_j(w . F[n, :, j] + b) * F[n, c, j]; probs (N, H, W) is the softmax,
// kept for the backward. The bias gradient is exactly zero (softmax is shift-invariant) and is not
// computed here. need_feat = false skips dF (a detached teacher) and returns an empty grad_feat.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def("gc_context(Tensor feat, Tensor weight, Tensor bias) -> (Tensor context, Tensor probs)");
  m.def(
      "gc_context_backward(Tensor grad_context, Tensor feat, Tensor weight, Tensor context, Tensor probs, "
      "bool need_feat) -> (Tensor grad_feat, Tensor grad_weight)");
}
