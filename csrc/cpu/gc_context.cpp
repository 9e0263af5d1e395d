// CPU kernels of the GcBlock context pooling (docs/math.md §4).
// Forward, one pass over F with an online softmax: each task (image, pixel block) computes its
// logits, a block-local max and exp-sum, and partial contexts sum_j exp(l_j - max_b) F[c, j] while
// the block is still in cache; per image the blocks are merged in order, rescaled to the global max.
// Backward, one pass: ubar = g . context needs no pass, so each block computes u_j = g . F[:, j],
// dl_j = p_j (u_j - ubar), the partial weight gradient sum_j dl_j F[c, j] and (if asked) dF.
// When the softmax saturates (p_r ~ 1), u_r - ubar is a tiny difference of two large numbers and dl_r
// keeps only its rounding error (float64: 4e-5 relative in dw at logit std 150, float32: garbage). As
// sum_j dl_j = 0 exactly, the largest-p pixel r of each image (found first, one pass over p) is left out of
// the block sums (dl_r = 0 there), and a last O(C) step per image adds it as dl_r = -sum_{j != r} dl_j:
// dw += dl_r F[:, r], dF[:, r] = p_r g + w dl_r. That sum carries every dl_j's rounding (error ~ sqrt(H*W)
// ulps of dl), so it is used only where the softmax saturates (p_r > 1/2); below, dl_r = p_r (u_r - ubar).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gradient_buffer.h"
#include "isa.h"
#include "parallel.h"
#include "row_math.h"
#include "kdops/math/gc_context.h"
#include "kdops/math/transcendental.h"
#include "../ops/gc_context.h"

namespace kdops {
namespace {

// Pixels per task: about 512 KiB of features, so the second sweep over the block hits the cache.
int64_t pixel_block(int64_t C, int64_t elem_size) {
  return std::max<int64_t>(64, std::min<int64_t>(4096, (512 * 1024) / (C * elem_size)));
}

// One task of the forward: the logits of one pixel block of one image, their block max and exp-sum,
// and the block's partial contexts sum_j exp(l_j - max_b) F[c, j] while the block is in cache.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void forward_block(const scalar_t* f, const acc* w, acc b, int64_t task, int64_t blocks,
                                    int64_t block, int64_t C, int64_t HW, acc* logits, acc* e, acc* ctx_part,
                                    acc* block_max, acc* block_sum) {
  const int64_t n = task / blocks, p0 = (task % blocks) * block;
  const int64_t len = std::min(block, HW - p0);
  acc* l = logits + n * HW + p0;
  std::fill(l, l + len, b);
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* row = f + (n * C + c) * HW + p0;
    const acc wc = w[c];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) l[j] += wc * static_cast<acc>(row[j]);
  }
  acc mx = -std::numeric_limits<acc>::infinity(), total = 0;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < len; ++j) mx = std::max(mx, l[j]);
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < len; ++j) {
    e[j] = math::exp_<acc>(l[j] - mx);
    total += e[j];
  }
  block_max[task] = mx;
  block_sum[task] = total;
  for (int64_t c = 0; c < C; ++c) {
    ctx_part[task * C + c] = cpu::dot(e, f + (n * C + c) * HW + p0, len);
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& feat, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& context,
                  at::Tensor& probs) {
  using acc = acc_t<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), HW = feat.size(2) * feat.size(3);
  const int64_t block = pixel_block(C, sizeof(scalar_t)), blocks = (HW + block - 1) / block;
  const scalar_t* f = feat.const_data_ptr<scalar_t>();
  const acc* w = weight.const_data_ptr<acc>();
  const acc b = bias.const_data_ptr<acc>()[0];
  acc* logits = probs.data_ptr<acc>();  // holds the logits until the softmax is known
  std::vector<acc> ctx_part(N * blocks * C), block_max(N * blocks), block_sum(N * blocks);

  cpu::parallel_chunks(N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> e(block);
    for (int64_t task = begin; task < end; ++task)
      forward_block<scalar_t>(f, w, b, task, blocks, block, C, HW, logits, e.data(), ctx_part.data(),
                              block_max.data(), block_sum.data());
  });

  acc* ctx = context.data_ptr<acc>();
  cpu::parallel_chunks(N, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> rescale(blocks);
    std::vector<double> cn_sum(C);
    for (int64_t n = begin; n < end; ++n) {  // block results added in double: a plane has up to 2^19 blocks
      acc mx = -std::numeric_limits<acc>::infinity();
      double z_sum = 0;
      for (int64_t k = 0; k < blocks; ++k) mx = std::max(mx, block_max[n * blocks + k]);
      for (int64_t k = 0; k < blocks; ++k) {
        rescale[k] = std::exp(block_max[n * blocks + k] - mx);
        z_sum += static_cast<double>(block_sum[n * blocks + k] * rescale[k]);
      }
      std::fill(cn_sum.begin(), cn_sum.end(), 0.0);
      for (int64_t k = 0; k < blocks; ++k)
        for (int64_t c = 0; c < C; ++c)
          cn_sum[c] += static_cast<double>(ctx_part[(n * blocks + k) * C + c] * rescale[k]);
      acc* cn = ctx + n * C;
      for (int64_t c = 0; c < C; ++c) cn[c] = static_cast<acc>(cn_sum[c] / z_sum);
      const acc inv_z = static_cast<acc>(1.0 / z_sum);
      acc* p = logits + n * HW;
#pragma omp simd
      for (int64_t j = 0; j < HW; ++j) p[j] = math::exp_<acc>(p[j] - mx) * inv_z;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gc_context_cpu(const at::Tensor& feat_in, const at::Tensor& weight_in,
                                                  const at::Tensor& bias_in) {
  check_gc_context_args(feat_in, weight_in, bias_in);
  const at::Tensor feat = feat_in.contiguous(), weight = weight_in.contiguous(), bias = bias_in.contiguous();
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const auto opts = feat.options().dtype(acc_dtype(feat.scalar_type()));
  at::Tensor context = at::empty({N, C}, opts), probs = at::empty({N, H, W}, opts);
  if (N == 0) return {context, probs};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_gc_context_cpu",
                                  [&] { forward_impl<scalar_t>(feat, weight, bias, context, probs); });
  return {context, probs};
}

// One task of the backward: u_j = g . F[:, j] and dl_j for one pixel block of one image, the block's
// partial weight gradient sum_j dl_j F[c, j] and, when df is given, dF for the block.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void backward_block(const scalar_t* f, const acc* w, const acc* g, const acc* probs_p, acc ubar,
                                     int64_t top, int64_t task, int64_t blocks, int64_t block, int64_t C, int64_t HW,
                                     acc* dl, acc* dw_part, acc* dl_sum, scalar_t* df) {
  const int64_t n = task / blocks, p0 = (task % blocks) * block;
  const int64_t len = std::min(block, HW - p0);
  const acc* gn = g + n * C;
  const acc* p = probs_p + n * HW + p0;
  std::fill(dl, dl + len, acc(0));
  for (int64_t c = 0; c < C; ++c) {  // u_j, accumulated in dl
    const scalar_t* row = f + (n * C + c) * HW + p0;
    const acc gc = gn[c];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) dl[j] += gc * static_cast<acc>(row[j]);
  }
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) dl[j] = gc::logit_grad<acc>(p[j], dl[j], ubar);
  if (top >= p0 && top < p0 + len) dl[top - p0] = 0;  // set from the others' sum afterwards
  acc total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < len; ++j) total += dl[j];
  dl_sum[task] = total;
  for (int64_t c = 0; c < C; ++c) {
    dw_part[task * C + c] = cpu::dot(dl, f + (n * C + c) * HW + p0, len);
    if (df != nullptr) {
      scalar_t* out = df + (n * C + c) * HW + p0;
      const acc gc = gn[c], wc = w[c];
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) out[j] = gc::grad_feat<acc, scalar_t>(p[j], gc, wc, dl[j]);
    }
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_context, const at::Tensor& feat, const at::Tensor& weight,
                   const at::Tensor& context, const at::Tensor& probs, bool need_feat, at::Tensor& grad_feat,
                   at::Tensor& grad_weight) {
  using acc = acc_t<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), HW = feat.size(2) * feat.size(3);
  const int64_t block = pixel_block(C, sizeof(scalar_t)), blocks = (HW + block - 1) / block;
  const scalar_t* f = feat.const_data_ptr<scalar_t>();
  const acc* w = weight.const_data_ptr<acc>();
  const acc* g = grad_context.const_data_ptr<acc>();
  const acc* ctx = context.const_data_ptr<acc>();
  const acc* probs_p = probs.const_data_ptr<acc>();
  scalar_t* df = need_feat ? grad_feat.data_ptr<scalar_t>() : nullptr;
  std::vector<acc> ubar(N), dw_part(N * blocks * C), dl_sum(N * blocks), dw_top(N * C);
  std::vector<int64_t> top(N);
  for (int64_t n = 0; n < N; ++n) {
    double u = 0;
    for (int64_t c = 0; c < C; ++c) u += static_cast<double>(g[n * C + c] * ctx[n * C + c]);
    ubar[n] = static_cast<acc>(u);
  }
  cpu::parallel_chunks(N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const acc* p = probs_p + n * HW;
      top[n] = std::max_element(p, p + HW) - p;
    }
  });

  cpu::parallel_chunks(N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> dl(block);
    for (int64_t task = begin; task < end; ++task)
      backward_block<scalar_t>(f, w, g, probs_p, ubar[task / blocks], top[task / blocks], task, blocks, block, C,
                               HW, dl.data(), dw_part.data(), dl_sum.data(), df);
  });

  for (int64_t n = 0; n < N; ++n) {  // the top pixel: dl_r = -sum_{j != r} dl_j (see the top of the file)
    const int64_t r = top[n];
    const acc p_r = probs_p[n * HW + r];
    acc dl_r;
    if (p_r > acc(0.5)) {
      double others = 0;  // in double: a plane has up to 2^19 blocks
      for (int64_t k = 0; k < blocks; ++k) others += dl_sum[n * blocks + k];
      dl_r = static_cast<acc>(-others);
    } else {
      acc u = 0;  // as backward_block computes u_j
      for (int64_t c = 0; c < C; ++c) u += g[n * C + c] * static_cast<acc>(f[(n * C + c) * HW + r]);
      dl_r = gc::logit_grad<acc>(p_r, u, ubar[n]);
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = (n * C + c) * HW + r;
      dw_top[n * C + c] = dl_r * static_cast<acc>(f[i]);
      if (df != nullptr) df[i] = gc::grad_feat<acc, scalar_t>(probs_p[n * HW + r], g[n * C + c], w[c], dl_r);
    }
  }

  std::vector<double> gw_sum(C);
  for (int64_t task = 0; task < N * blocks; ++task)
    for (int64_t c = 0; c < C; ++c) gw_sum[c] += dw_part[task * C + c];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) gw_sum[c] += dw_top[n * C + c];
  acc* gw = grad_weight.data_ptr<acc>();
  for (int64_t c = 0; c < C; ++c) gw[c] = static_cast<acc>(gw_sum[c]);
}

std::tuple<at::Tensor, at::Tensor> gc_context_backward_cpu(const at::Tensor& grad_context, const at::Tensor& feat_in,
                                                           const at::Tensor& weight, const at::Tensor& context,
                                                           const at::Tensor& probs, bool need_feat) {
  check_gc_context_backward_args(grad_context, feat_in, weight, context, probs);
  const at::Tensor feat = feat_in.contiguous();
  at::Tensor grad_feat = need_feat ? cpu::empty_gradient_like(feat) : feat.new_empty({0});
  at::Tensor grad_weight = at::zeros_like(weight);
  if (feat.numel() == 0) return {grad_feat, grad_weight};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "kdops_gc_context_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_context.contiguous(), feat, weight.contiguous(), context.contiguous(),
                            probs.contiguous(), need_feat, grad_feat, grad_weight);
  });
  return {grad_feat, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("gc_context", &gc_context_cpu);
  m.impl("gc_context_backward", &gc_context_backward_cpu);
}

}  // namespace kdops
