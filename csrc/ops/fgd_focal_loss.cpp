// Schema of the FGD focal loss (docs/math.md §3). Kernels: cpu/fgd_focal_loss.cpp, cuda/fgd_focal_loss.cu.
// fg, bg: (N, H, W) box masks in the accumulation dtype. Outputs: the weighted loss, the three
// unweighted terms (L_fg, L_bg, L_att), and what the backward needs: the teacher's attention masks
// and the attention-loss gradient coefficients dL_att/d|S| = pixel_att_grad[n,h,w] + channel_att_grad[n,c]
// (already divided by C and H*W). The backward takes the gradient of the loss and of the terms.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def(
      "fgd_focal_loss(Tensor student, Tensor teacher, Tensor fg, Tensor bg, float temperature, float alpha, "
      "float beta, float gamma) -> (Tensor loss, Tensor terms, Tensor teacher_spatial, Tensor teacher_channel, "
      "Tensor pixel_att_grad, Tensor channel_att_grad)");
  m.def(
      "fgd_focal_loss_backward(Tensor grad_loss, Tensor grad_terms, Tensor student, Tensor teacher, Tensor fg, "
      "Tensor bg, Tensor teacher_spatial, Tensor teacher_channel, Tensor pixel_att_grad, Tensor channel_att_grad, "
      "float alpha, float beta, float gamma) -> Tensor");
}
