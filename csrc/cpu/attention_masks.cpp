// CPU kernels of the FGD attention masks (docs/math.md §1).
// Forward reads feat once: each task owns one image and a block of pixels, sums |F| over
// channels for its pixels (m) and over its pixels for every channel (a partial k), and the
// partials are added in a fixed order so the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "fgd_attention.h"
#include "gradient_buffer.h"
#include "parallel.h"
#include "kdops/math/attention_masks.h"
#include "../ops/attention_masks.h"

namespace kdops {
namespace {

constexpr int64_t kPixelBlock = 2048;

template <typename scalar_t>
void forward_impl(const at::Tensor& feat, double temperature, at::Tensor& spatial, at::Tensor& channel) {
  using acc = acc_t<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), HW = feat.size(2) * feat.size(3);
  const int64_t blocks = (HW + kPixelBlock - 1) / kPixelBlock;
  const scalar_t* f = feat.const_data_ptr<scalar_t>();
  std::vector<acc> m_sum(N * HW), k_part(N * blocks * C);

  cpu::parallel_chunks(N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * kPixelBlock;
      const int64_t len = std::min(kPixelBlock, HW - p0);
      acc* m = m_sum.data() + n * HW + p0;
      std::fill(m, m + len, acc(0));
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* row = f + (n * C + c) * HW + p0;
        acc s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < len; ++j) {
          const acc v = std::abs(static_cast<acc>(row[j]));
          m[j] += v;
          s += v;
        }
        k_part[task * C + c] = s;
      }
    }
  });

  const acc inv_temp = acc(1) / static_cast<acc>(temperature);
  acc* sp = spatial.data_ptr<acc>();
  acc* ch = channel.data_ptr<acc>();
  cpu::parallel_chunks(N, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> k_sum(C);
    std::vector<acc> k(C);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(k_sum.begin(), k_sum.end(), 0.0);
      for (int64_t b = 0; b < blocks; ++b)  // in double: a plane has up to 2^20 blocks
        for (int64_t c = 0; c < C; ++c) k_sum[c] += k_part[(n * blocks + b) * C + c];
      std::copy(k_sum.begin(), k_sum.end(), k.begin());
      cpu::scaled_softmax_row<acc>(m_sum.data() + n * HW, sp + n * HW, HW, inv_temp / C);
      cpu::scaled_softmax_row<acc>(k.data(), ch + n * C, C, inv_temp / HW);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_masks_cpu(const at::Tensor& feat_in, double temperature) {
  check_attention_masks_args(feat_in, temperature);
  const at::Tensor feat = feat_in.contiguous();
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const auto opts = feat.options().dtype(acc_dtype(feat.scalar_type()));
  at::Tensor spatial = at::empty({N, H, W}, opts), channel = at::empty({N, C}, opts);
  if (N == 0) return {spatial, channel};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_attention_masks_cpu",
                                  [&] { forward_impl<scalar_t>(feat, temperature, spatial, channel); });
  return {spatial, channel};
}

// g_scaled[i] = scaled_softmax_grad(...) * post_scale over one row.
template <typename acc>
void softmax_grad_row(const acc* a, const acc* g, acc* out, int64_t len, acc inv_temp, acc post_scale) {
  const acc weighted = cpu::weighted_mean<acc>(a, [&](int64_t i) { return g[i]; }, len);
  for (int64_t i = 0; i < len; ++i)
    out[i] = attention::scaled_softmax_grad<acc>(a[i], g[i], weighted, inv_temp) * post_scale;
}

template <typename scalar_t>
void backward_impl(const at::Tensor& g_sp, const at::Tensor& g_ch, const at::Tensor& feat, const at::Tensor& sp,
                   const at::Tensor& ch, double temperature, at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), HW = feat.size(2) * feat.size(3);
  const acc inv_temp = acc(1) / static_cast<acc>(temperature);
  // Per-pixel and per-channel coefficients, already divided by C and HW (the means in m and k).
  std::vector<acc> gm(N * HW), gk(N * C);
  cpu::parallel_chunks(N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      softmax_grad_row<acc>(sp.const_data_ptr<acc>() + n * HW, g_sp.const_data_ptr<acc>() + n * HW,
                            gm.data() + n * HW, HW, inv_temp, acc(1) / C);
      softmax_grad_row<acc>(ch.const_data_ptr<acc>() + n * C, g_ch.const_data_ptr<acc>() + n * C,
                            gk.data() + n * C, C, inv_temp, acc(1) / HW);
    }
  });
  const scalar_t* f = feat.const_data_ptr<scalar_t>();
  scalar_t* out = grad.data_ptr<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / HW);
  cpu::parallel_chunks(N * C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / C;
      const acc* gmn = gm.data() + n * HW;
      const acc gkc = gk[row];
      const scalar_t* fr = f + row * HW;
      scalar_t* o = out + row * HW;
#pragma omp simd
      for (int64_t j = 0; j < HW; ++j) o[j] = attention::grad_feature<acc, scalar_t>(fr[j], gmn[j], gkc);
    }
  });
}

at::Tensor attention_masks_backward_cpu(const at::Tensor& grad_spatial, const at::Tensor& grad_channel,
                                        const at::Tensor& feat_in, const at::Tensor& spatial,
                                        const at::Tensor& channel, double temperature) {
  check_attention_masks_backward_args(grad_spatial, grad_channel, feat_in, spatial, channel);
  const at::Tensor feat = feat_in.contiguous();
  at::Tensor grad = cpu::empty_gradient_like(feat);
  if (feat.numel() == 0) return grad;
  const auto acc_type = acc_dtype(feat.scalar_type());
  const auto prep = [&](const at::Tensor& t) { return t.to(acc_type).contiguous(); };
  const at::Tensor g_sp = prep(grad_spatial), g_ch = prep(grad_channel), sp = prep(spatial), ch = prep(channel);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_attention_masks_backward_cpu",
                                  [&] { backward_impl<scalar_t>(g_sp, g_ch, feat, sp, ch, temperature, grad); });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("attention_masks", &attention_masks_cpu);
  m.impl("attention_masks_backward", &attention_masks_backward_cpu);
}

}  // namespace kdops
