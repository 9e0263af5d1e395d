// CPU kernels of the FGD focal loss (docs/math.md §3).
// Forward, two passes over S and T: (1) per task (image, pixel block) the channel sums of |S| and
// |T| per pixel and per-block partial pixel sums per channel -> both sides' attention masks;
// (2) per (n, c) row the teacher-weighted squared differences under M_fg and M_bg. Everything else
// lives in (N, H*W) and (N, C) vectors. Backward is one elementwise pass writing dS.
// Partial sums are added in a fixed order (long ones in blocks and double, blocked_sum.h), so results
// do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "blocked_sum.h"
#include "fgd_attention.h"
#include "gradient_buffer.h"
#include "isa.h"
#include "parallel.h"
#include "kdops/math/fgd_focal_loss.h"
#include "../ops/fgd_focal_loss.h"

namespace kdops {
namespace {

constexpr int64_t kPixelBlock = 2048;

inline int64_t row_grain(int64_t hw) { return std::max<int64_t>(1, 32768 / hw); }

// Pass 1 of the forward for one (image, pixel block) task: per-pixel channel sums of |S| and |T| into
// ms / mt, and the block's per-channel sums of |S| and |T|.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void abs_sums_block(const scalar_t* s, const scalar_t* t, int64_t task, int64_t blocks, int64_t C,
                                     int64_t HW, acc* s_sp, acc* t_sp, acc* ks_part, acc* kt_part) {
  const int64_t n = task / blocks, p0 = (task % blocks) * kPixelBlock;
  const int64_t len = std::min(kPixelBlock, HW - p0);
  acc* ms = s_sp + n * HW + p0;
  acc* mt = t_sp + n * HW + p0;
  std::fill(ms, ms + len, acc(0));
  std::fill(mt, mt + len, acc(0));
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* sr = s + (n * C + c) * HW + p0;
    const scalar_t* tr = t + (n * C + c) * HW + p0;
    acc ks = 0, kt = 0;
#pragma omp simd reduction(+ : ks, kt)
    for (int64_t j = 0; j < len; ++j) {
      const acc a = std::abs(static_cast<acc>(sr[j])), b = std::abs(static_cast<acc>(tr[j]));
      ms[j] += a;
      mt[j] += b;
      ks += a;
      kt += b;
    }
    ks_part[task * C + c] = ks;
    kt_part[task * C + c] = kt;
  }
}

// Pass 2 for rows [begin, end): sum_j M[j] A_S^t[j] (S - T)^2 under both masks, times A_C^t[n, c]; a pixel
// where a mask is 0 adds exactly 0 to its sum.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void masked_squares_rows(const scalar_t* s, const scalar_t* t, const acc* fg, const acc* bg,
                                          const acc* t_sp, const acc* t_ch, int64_t begin, int64_t end, int64_t C,
                                          int64_t HW, double* fg_part, double* bg_part) {
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / C;
    const scalar_t* sr = s + row * HW;
    const scalar_t* tr = t + row * HW;
    const acc *fm = fg + n * HW, *bm = bg + n * HW, *sp = t_sp + n * HW;
    const auto sums = cpu::blocked_sum(HW, [&](int64_t j0, int64_t j1) {
      acc sf = 0, sb = 0;
#pragma omp simd reduction(+ : sf, sb)
      for (int64_t j = j0; j < j1; ++j) {
        const acc d = static_cast<acc>(sr[j]) - static_cast<acc>(tr[j]);
        const acc a = sp[j] * d * d;
        sf += weighted<acc>(fm[j], a);
        sb += weighted<acc>(bm[j], a);
      }
      return std::array<acc, 2>{sf, sb};
    });
    fg_part[row] = sums[0] * t_ch[row];
    bg_part[row] = sums[1] * t_ch[row];
  }
}

// dS for rows [begin, end).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void grad_rows(const scalar_t* s, const scalar_t* t, const acc* mask_coef, const acc* t_sp,
                                const acc* pixel_att_scaled, const acc* t_ch, const acc* ca, acc c_att, int64_t begin,
                                int64_t end, int64_t C, int64_t HW, scalar_t* out) {
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / C;
    const acc *mc = mask_coef + n * HW, *sp = t_sp + n * HW;
    const acc* pat = pixel_att_scaled + n * HW;
    const acc cw = t_ch[row], cat = weighted<acc>(c_att, ca[row]);
    const scalar_t* sr = s + row * HW;
    const scalar_t* tr = t + row * HW;
    scalar_t* o = out + row * HW;
#pragma omp simd
    for (int64_t j = 0; j < HW; ++j)
      o[j] = focal::grad_student<acc, scalar_t>(sr[j], tr[j], mc[j], sp[j], cw, pat[j], cat);
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& fg, const at::Tensor& bg,
                  double temperature, double alpha, double beta, double gamma, at::Tensor& loss, at::Tensor& terms,
                  at::Tensor& t_spatial, at::Tensor& t_channel, at::Tensor& pixel_att, at::Tensor& channel_att) {
  using acc = acc_t<scalar_t>;
  const int64_t N = student.size(0), C = student.size(1), HW = student.size(2) * student.size(3);
  const int64_t blocks = (HW + kPixelBlock - 1) / kPixelBlock;
  const scalar_t* s = student.const_data_ptr<scalar_t>();
  const scalar_t* t = teacher.const_data_ptr<scalar_t>();
  acc* t_sp = t_spatial.data_ptr<acc>();
  acc* t_ch = t_channel.data_ptr<acc>();
  std::vector<acc> s_sp(N * HW), s_ch(N * C), ks_part(N * blocks * C), kt_part(N * blocks * C);

  // Pass 1: per-pixel channel sums (into the spatial buffers) and per-block per-channel sums of |S|, |T|.
  cpu::parallel_chunks(N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task)
      abs_sums_block<scalar_t>(s, t, task, blocks, C, HW, s_sp.data(), t_sp, ks_part.data(), kt_part.data());
  });

  // Masks and the attention loss with its gradient coefficients, one image per task.
  const acc inv_temp = acc(1) / static_cast<acc>(temperature), inv_n = acc(1) / static_cast<acc>(N);
  std::vector<double> att_part(N);
  cpu::parallel_chunks(N, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> ks_sum(C), kt_sum(C);
    for (int64_t n = begin; n < end; ++n) {
      acc* ks = s_ch.data() + n * C;
      acc* kt = t_ch + n * C;
      std::fill(ks_sum.begin(), ks_sum.end(), 0.0);
      std::fill(kt_sum.begin(), kt_sum.end(), 0.0);
      for (int64_t b = 0; b < blocks; ++b)  // in double: a plane has up to 2^20 blocks
        for (int64_t c = 0; c < C; ++c) {
          ks_sum[c] += ks_part[(n * blocks + b) * C + c];
          kt_sum[c] += kt_part[(n * blocks + b) * C + c];
        }
      std::copy(ks_sum.begin(), ks_sum.end(), ks);
      std::copy(kt_sum.begin(), kt_sum.end(), kt);
      att_part[n] = cpu::attention_image<acc>(ks, kt, s_sp.data() + n * HW, t_sp + n * HW,
                                              channel_att.data_ptr<acc>() + n * C, pixel_att.data_ptr<acc>() + n * HW,
                                              C, HW, inv_n, inv_temp);
    }
  });

  // Pass 2: sum_j M[j] * A_S^t[j] * (S - T)^2 per (n, c) row, times A_C^t[n, c].
  std::vector<double> fg_part(N * C), bg_part(N * C);
  cpu::parallel_chunks(N * C, row_grain(HW), [&](int64_t begin, int64_t end) {
    masked_squares_rows<scalar_t>(s, t, fg.const_data_ptr<acc>(), bg.const_data_ptr<acc>(), t_sp, t_ch, begin, end, C,
                                  HW, fg_part.data(), bg_part.data());
  });

  double l_fg = 0, l_bg = 0, l_att = 0;
  for (int64_t row = 0; row < N * C; ++row) {
    l_fg += fg_part[row];
    l_bg += bg_part[row];
  }
  for (int64_t n = 0; n < N; ++n) l_att += att_part[n];
  acc* tm = terms.data_ptr<acc>();
  tm[0] = static_cast<acc>(l_fg / N);
  tm[1] = static_cast<acc>(l_bg / N);
  tm[2] = static_cast<acc>(l_att / N);
  loss.fill_(focal::weighted_loss<acc>(static_cast<acc>(alpha), tm[0], static_cast<acc>(beta), tm[1],
                                       static_cast<acc>(gamma), tm[2]));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fgd_focal_loss_cpu(
    const at::Tensor& student_in, const at::Tensor& teacher_in, const at::Tensor& fg_in, const at::Tensor& bg_in,
    double temperature, double alpha, double beta, double gamma) {
  check_fgd_focal_loss_args(student_in, teacher_in, fg_in, bg_in, temperature);
  const at::Tensor student = student_in.contiguous(), teacher = teacher_in.contiguous();
  const at::Tensor fg = fg_in.contiguous(), bg = bg_in.contiguous();
  const int64_t N = student.size(0), C = student.size(1), H = student.size(2), W = student.size(3);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor loss = at::zeros({}, opts), terms = at::zeros({3}, opts);
  at::Tensor t_spatial = at::empty({N, H, W}, opts), t_channel = at::empty({N, C}, opts);
  at::Tensor pixel_att = at::empty({N, H, W}, opts), channel_att = at::empty({N, C}, opts);
  if (N == 0) return {loss, terms, t_spatial, t_channel, pixel_att, channel_att};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kdops_fgd_focal_loss_cpu", [&] {
    forward_impl<scalar_t>(student, teacher, fg, bg, temperature, alpha, beta, gamma, loss, terms, t_spatial,
                           t_channel, pixel_att, channel_att);
  });
  return {loss, terms, t_spatial, t_channel, pixel_att, channel_att};
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_loss, const at::Tensor& grad_terms, const at::Tensor& student,
                   const at::Tensor& teacher, const at::Tensor& fg, const at::Tensor& bg, const at::Tensor& t_spatial,
                   const at::Tensor& t_channel, const at::Tensor& pixel_att, const at::Tensor& channel_att,
                   double alpha, double beta, double gamma, at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t N = student.size(0), C = student.size(1), HW = student.size(2) * student.size(3);
  // CPU tensors: reading the incoming gradients is a plain memory load, not a device sync.
  const acc gl = grad_loss.const_data_ptr<acc>()[0];
  const acc* gt = grad_terms.const_data_ptr<acc>();
  const acc c_fg = static_cast<acc>(alpha) * gl + gt[0], c_bg = static_cast<acc>(beta) * gl + gt[1];
  const acc c_att = static_cast<acc>(gamma) * gl + gt[2];
  const acc two_over_n = acc(2) / static_cast<acc>(N);
  const acc* fgp = fg.const_data_ptr<acc>();
  const acc* bgp = bg.const_data_ptr<acc>();
  const acc* t_sp = t_spatial.const_data_ptr<acc>();
  const acc* pa = pixel_att.const_data_ptr<acc>();
  std::vector<acc> mask_coef(N * HW), pixel_att_scaled(N * HW);
  for (int64_t i = 0; i < N * HW; ++i) {
    mask_coef[i] = focal::mask_coef<acc>(two_over_n, c_fg, fgp[i], c_bg, bgp[i]);
    pixel_att_scaled[i] = weighted<acc>(c_att, pa[i]);  // gamma * g + G_att = 0: no attention term at all
  }
  const acc* t_ch = t_channel.const_data_ptr<acc>();
  const acc* ca = channel_att.const_data_ptr<acc>();
  const scalar_t* s = student.const_data_ptr<scalar_t>();
  const scalar_t* t = teacher.const_data_ptr<scalar_t>();
  scalar_t* out = grad.data_ptr<scalar_t>();
  cpu::parallel_chunks(N * C, row_grain(HW), [&](int64_t begin, int64_t end) {
    grad_rows<scalar_t>(s, t, mask_coef.data(), t_sp, pixel_att_scaled.data(), t_ch, ca, c_att, begin, end, C, HW,
                        out);
  });
}

at::Tensor fgd_focal_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_terms,
                                       const at::Tensor& student_in, const at::Tensor& teacher_in,
                                       const at::Tensor& fg, const at::Tensor& bg, const at::Tensor& t_spatial,
                                       const at::Tensor& t_channel, const at::Tensor& pixel_att,
                                       const at::Tensor& channel_att, double alpha, double beta, double gamma) {
  check_fgd_focal_loss_backward_args(grad_loss, grad_terms, student_in, teacher_in, fg, bg, t_spatial, t_channel,
                                     pixel_att, channel_att);
  const at::Tensor student = student_in.contiguous(), teacher = teacher_in.contiguous();
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  const auto acc_type = acc_dtype(student.scalar_type());
  const auto prep = [&](const at::Tensor& x) { return x.to(acc_type).contiguous(); };
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kdops_fgd_focal_loss_backward_cpu",
                                  [&] {
                                    backward_impl<scalar_t>(prep(grad_loss), prep(grad_terms), student, teacher,
                                                            prep(fg), prep(bg), prep(t_spatial), prep(t_channel),
                                                            prep(pixel_att), prep(channel_att), alpha, beta, gamma,
                                                            grad);
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("fgd_focal_loss", &fgd_focal_loss_cpu);
  m.impl("fgd_focal_loss_backward", &fgd_focal_loss_backward_cpu);
}

}  // namespace kdops
