// Schema of the FGD feature pass: every (N, C, H, W)-sized part of one FGD level (docs/math.md §3-§4) in one
// pass over S and T each way. Kernels: cpu/fgd_feature_pass.cpp, cuda/fgd_feature_pass.cu (their Triton twin:
// kdops/triton/fgd_feature_pass.py). Outputs:
//   loss, terms      as fgd_focal_loss (the weighted focal loss and the unweighted L_fg, L_bg, L_att);
//   ctx_s, ctx_t     the student and teacher GcBlock contexts (gc_context with each side's weight, bias);
//   diff_sq          sum (S - T)^2 (0-dim) and diff_sum[n, c] = sum_hw (S - T): with d = delta_s - delta_t,
//   diff_sum         N * L_global = diff_sq + 2 sum d * diff_sum + H*W sum d^2, so no pass is left for it;
//   then what the backward needs: teacher_spatial, teacher_channel, pixel_att_grad, channel_att_grad
//   (as fgd_focal_loss) and the two GcBlock softmaxes probs_s, probs_t (N, H, W).
// The backward takes the gradients of the six differentiable outputs and the saved statistics, each by name,
// and returns dS and the gradients of both GcBlock weights (the biases' are exactly zero).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(kdops, m) {
  m.def(
      "fgd_feature_pass(Tensor student, Tensor teacher, Tensor fg, Tensor bg, Tensor student_gc_weight, "
      "Tensor student_gc_bias, Tensor teacher_gc_weight, Tensor teacher_gc_bias, float temperature, float alpha, "
      "float beta, float gamma) -> (Tensor loss, Tensor terms, Tensor ctx_s, Tensor ctx_t, Tensor diff_sq, "
      "Tensor diff_sum, Tensor teacher_spatial, Tensor teacher_channel, Tensor pixel_att_grad, "
      "Tensor channel_att_grad, Tensor probs_s, Tensor probs_t)");
  m.def(
      "fgd_feature_pass_backward(Tensor grad_loss, Tensor grad_terms, Tensor grad_ctx_s, Tensor grad_ctx_t, "
      "Tensor grad_diff_sq, Tensor grad_diff_sum, Tensor student, Tensor teacher, Tensor fg, Tensor bg, "
      "Tensor student_gc_weight, Tensor teacher_gc_weight, Tensor ctx_s, Tensor ctx_t, Tensor teacher_spatial, "
      "Tensor teacher_channel, Tensor pixel_att_grad, Tensor channel_att_grad, Tensor probs_s, Tensor probs_t, "
      "float alpha, float beta, float gamma) -> (Tensor grad_student, Tensor grad_student_gc_weight, "
      "Tensor grad_teacher_gc_weight)");
}
