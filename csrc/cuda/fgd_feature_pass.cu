// CUDA kernels of the FGD feature pass (schema: csrc/ops/fgd_feature_pass.cpp, docs/math.md §3-§4); same
// algorithm as csrc/cpu/fgd_feature_pass.cpp: one FGD level's focal loss, both GcBlock contexts and the
// relation loss' feature sums in one pass over S and T each way.
//
// A block owns one image's tile of kTile pixels (lane l holds pixels l + 32 v) and its warps split the
// channels (warp w: c = w, w + kWarps, ...): per-channel tile sums are warp sums, per-pixel sums are the
// warps' shares added in warp order through shared memory. The second sweep over a tile's channels
// re-reads its slice of S and T (2 kTile C elements), from L2 while the resident blocks' slices fit there
// (at C = 256 in fp32 they may not: 8 resident blocks per SM).
// Forward:  partial_kernel, sweep 1: per-pixel sums of |S|, |T| and both GcBlock logits; per-channel tile
//           sums of |S|, |T|, S - T; the tile's sum (S - T)^2. Sweep 2, with tile-local softmax maxima:
//           per-channel tile sums of w_j (S - T)^2 under M_fg and M_bg (w_j the unnormalised teacher
//           pixel attention) and both partial contexts sum_j exp(l_j - max) F[c, j].
//           softmax_merge_kernel: per image and online softmax, the max, the normaliser and every
//           tile's rescale factor; merge_kernel: per (image, channel), one warp adds the tiles' partials.
//           Then the masks (rows.cuh), the attention loss (fgd_attention.cuh), finalize_kernel (loss,
//           terms, diff_sq) and probs_kernel (both GcBlock softmaxes, over their logits).
// Backward: grad_kernel, sweep 1: u_j = g . F[:, j] of both sides, dl_j = p_j (u_j - g . ctx); sweep 2:
//           dS (feature_pass::grad_student) and per-channel tile sums of dl_j F[c, j];
//           weight_grad_kernel (a warp per channel) adds those in tile order.
// Deterministic (fixed-order sums, no atomics), no host sync.
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers we do not use.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kdops/layout.h"
#include "kdops/math/fgd_feature_pass.h"
#include "kdops/math/transcendental.h"
#include "../ops/fgd_feature_pass.h"
#include "fgd_attention.cuh"
#include "reduce.cuh"
#include "rows.cuh"

namespace kdops {
namespace {

using namespace kdops::cuda;
using namespace kdops::feature_pass;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr int kPerLane = 2;  // pixels per lane: halves the warp shuffles per element and the partials
constexpr int kTile = kWarp * kPerLane;
constexpr int kRowWarps = 4;  // warps per block of the kernels that give each channel's sum over the tiles a warp
constexpr unsigned kFull = 0xffffffffu;

// A lane's pixels of tile `tile`: j[v] = tile * kTile + v * 32 + lane, ok[v] = j[v] < HW.
struct Pixels {
  int64_t j[kPerLane];
  bool ok[kPerLane];

  __device__ Pixels(int64_t tile, int64_t HW) {
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) {
      j[v] = tile * kTile + v * kWarp + threadIdx.x % kWarp;
      ok[v] = j[v] < HW;
    }
  }
};

// A warp sum every lane receives (warp_sum leaves it in lane 0).
template <typename acc>
__device__ __forceinline__ acc warp_total(acc v) {
  return __shfl_sync(kFull, warp_sum(v), 0);
}

// e[v] = exp((x[v] - max) * scale) over the tile's pixels (0 outside the image); returns the tile's (max of x,
// sum). Shifting before scaling keeps the max's weight exactly 1 at any scale (x * scale - max would be fused
// into one FMA whose rounding, at 1 / temperature = 1e30, is exp(+-1e23)). Every warp computes the same
// values, so no block synchronisation is needed.
template <typename acc>
__device__ void tile_softmax(const acc (&x)[kPerLane], const Pixels& px, acc scale, acc (&e)[kPerLane], acc& mx,
                             acc& sum) {
  acc m = -INFINITY;
#pragma unroll
  for (int v = 0; v < kPerLane; ++v) m = px.ok[v] ? fmax(m, x[v]) : m;
  mx = __shfl_sync(kFull, warp_max(m), 0);
  acc local = 0;
#pragma unroll
  for (int v = 0; v < kPerLane; ++v) {
    e[v] = px.ok[v] ? math::exp_<acc>((x[v] - mx) * scale) : acc(0);
    local += e[v];
  }
  sum = warp_total(local);
}

// shares[q][w][p]: warp w's share of per-pixel sum q at tile pixel p. Returns, for this lane's pixels,
// start + the shares added in warp order. The caller synchronises after writing the shares.
template <typename acc, int Q>
__device__ __forceinline__ void add_shares(const acc (&shares)[Q][kWarps][kTile], int q, acc start,
                                           acc (&out)[kPerLane]) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int v = 0; v < kPerLane; ++v) {
    acc total = start;
    for (int w = 0; w < kWarps; ++w) total += shares[q][w][v * kWarp + lane];
    out[v] = total;
  }
}

template <typename scalar_t, typename acc>
struct ForwardArgs {
  const scalar_t *s, *t;
  const acc *fg, *bg, *ws, *bs, *wt, *bt;  // (N, HW), (N, HW), (C,), (1,), (C,), (1,)
  acc att_scale;                           // 1 / (temperature * C): the teacher pixel attention's logit scale
  int64_t C, HW;
  acc *ms, *mt, *ls, *lt;                  // (N, HW): pixel sums of |S|, |T|; GcBlock logits of S, T
  acc* part;                               // (N, kPartials, C, tiles)
  acc *tile_max, *tile_sum;                // (N, kSoftmaxes, tiles)
  acc* tile_sq;                            // (N, tiles)
};

template <typename scalar_t, typename acc>
__global__ void partial_kernel(const ForwardArgs<scalar_t, acc> a) {
  enum Share { kMs = 0, kMt, kLs, kLt, kShares };
  __shared__ acc shares[kShares][kWarps][kTile];
  __shared__ acc sq_shares[kWarps];
  const int64_t C = a.C, HW = a.HW, n = blockIdx.y, tile = blockIdx.x, tiles = gridDim.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const Pixels px(tile, HW);
  const scalar_t* s = a.s + n * C * HW;
  const scalar_t* t = a.t + n * C * HW;
  acc* part = a.part + n * kPartials * C * tiles + tile;  // + (k * C + c) * tiles
  const auto partial = [&](int k, int64_t c) -> acc& { return part[(k * C + c) * tiles]; };

  acc ms[kPerLane] = {}, mt[kPerLane] = {}, ls[kPerLane] = {}, lt[kPerLane] = {}, sq = 0;
  for (int64_t c = warp; c < C; c += kWarps) {
    const acc wsc = a.ws[c], wtc = a.wt[c];
    acc ks = 0, kt = 0, ds = 0;
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) {
      const acc x = px.ok[v] ? static_cast<acc>(s[c * HW + px.j[v]]) : acc(0);
      const acc y = px.ok[v] ? static_cast<acc>(t[c * HW + px.j[v]]) : acc(0);
      const acc d = x - y;
      ms[v] += fabs(x);
      mt[v] += fabs(y);
      ls[v] += wsc * x;
      lt[v] += wtc * y;
      ks += fabs(x);
      kt += fabs(y);
      ds += d;
      sq += d * d;
    }
    ks = warp_sum(ks);
    kt = warp_sum(kt);
    ds = warp_sum(ds);
    if (lane == 0) {
      partial(kAbsS, c) = ks;
      partial(kAbsT, c) = kt;
      partial(kDiff, c) = ds;
    }
  }
#pragma unroll
  for (int v = 0; v < kPerLane; ++v) {
    const int p = v * kWarp + lane;
    shares[kMs][warp][p] = ms[v];
    shares[kMt][warp][p] = mt[v];
    shares[kLs][warp][p] = ls[v];
    shares[kLt][warp][p] = lt[v];
  }
  sq = warp_sum(sq);
  if (lane == 0) sq_shares[warp] = sq;
  __syncthreads();
  add_shares(shares, kMs, acc(0), ms);
  add_shares(shares, kMt, acc(0), mt);
  add_shares(shares, kLs, a.bs[0], ls);
  add_shares(shares, kLt, a.bt[0], lt);
  if (warp == 0) {
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) {
      if (!px.ok[v]) continue;
      const int64_t i = n * HW + px.j[v];
      a.ms[i] = ms[v];
      a.mt[i] = mt[v];
      a.ls[i] = ls[v];
      a.lt[i] = lt[v];
    }
  }
  if (threadIdx.x == 0) {
    acc total = 0;
    for (int w = 0; w < kWarps; ++w) total += sq_shares[w];
    a.tile_sq[n * tiles + tile] = total;
  }

  acc e_att[kPerLane], fg[kPerLane], bg[kPerLane], e_s[kPerLane], e_t[kPerLane], mx[kSoftmaxes], sum[kSoftmaxes];
  tile_softmax(mt, px, a.att_scale, e_att, mx[kAtt], sum[kAtt]);
  tile_softmax(ls, px, acc(1), e_s, mx[kGcS], sum[kGcS]);
  tile_softmax(lt, px, acc(1), e_t, mx[kGcT], sum[kGcT]);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < kSoftmaxes; ++k) {
      a.tile_max[(n * kSoftmaxes + k) * tiles + tile] = mx[k];
      a.tile_sum[(n * kSoftmaxes + k) * tiles + tile] = sum[k];
    }
  }
#pragma unroll
  for (int v = 0; v < kPerLane; ++v) {
    fg[v] = px.ok[v] ? a.fg[n * HW + px.j[v]] : acc(0);
    bg[v] = px.ok[v] ? a.bg[n * HW + px.j[v]] : acc(0);
  }

  for (int64_t c = warp; c < C; c += kWarps) {  // again: from L2 while it holds the slice
    acc qf = 0, qb = 0, cs = 0, ct = 0;
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) {
      const acc x = px.ok[v] ? static_cast<acc>(s[c * HW + px.j[v]]) : acc(0);
      const acc y = px.ok[v] ? static_cast<acc>(t[c * HW + px.j[v]]) : acc(0);
      const acc d2 = (x - y) * (x - y), a2 = e_att[v] * d2;
      qf += weighted<acc>(fg[v], a2);  // a pixel where a mask is 0 adds exactly 0
      qb += weighted<acc>(bg[v], a2);
      cs += e_s[v] * x;
      ct += e_t[v] * y;
    }
    qf = warp_sum(qf);
    qb = warp_sum(qb);
    cs = warp_sum(cs);
    ct = warp_sum(ct);
    if (lane == 0) {
      partial(kFg, c) = qf;
      partial(kBg, c) = qb;
      partial(kCtxS, c) = cs;
      partial(kCtxT, c) = ct;
    }
  }
}

// One block per image: each online softmax's image max and normaliser (stats (N, kSoftmaxes, 2)) and
// every tile's rescale factor exp((tile max - image max) * scale) (rescale (N, kSoftmaxes, tiles)); the maxima
// are of the unscaled values (tile_softmax), the attention's scale is att_scale, the GcBlocks' 1.
template <typename acc>
__global__ void softmax_merge_kernel(const acc* __restrict__ tile_max, const acc* __restrict__ tile_sum,
                                     acc* __restrict__ rescale, acc* __restrict__ stats, int64_t tiles, acc att_scale) {
  const int64_t n = blockIdx.x;
  for (int k = 0; k < kSoftmaxes; ++k) {
    const acc scale = k == kAtt ? att_scale : acc(1);
    const int64_t row = (n * kSoftmaxes + k) * tiles;
    acc local_max = -INFINITY;
    for (int64_t i = threadIdx.x; i < tiles; i += blockDim.x) local_max = fmax(local_max, tile_max[row + i]);
    const acc mx = block_max(local_max);
    KahanSum<acc> local_sum;
    for (int64_t i = threadIdx.x; i < tiles; i += blockDim.x) {
      const acc r = math::exp_<acc>((tile_max[row + i] - mx) * scale);
      rescale[row + i] = r;
      local_sum += tile_sum[row + i] * r;
    }
    const acc z = block_sum(local_sum.value());
    if (threadIdx.x == 0) {
      stats[(n * kSoftmaxes + k) * 2] = mx;
      stats[(n * kSoftmaxes + k) * 2 + 1] = z;
    }
  }
}

template <typename acc>
struct MergeArgs {
  const acc *part, *rescale, *stats;
  int64_t C, tiles;
  acc *ks, *kt, *diff_sum, *fg, *bg, *ctx_s, *ctx_t;  // (N, C)
};

// One warp per (channel, image): the tiles' partials added in tile order (Kahan per lane, then the
// warp's fixed tree), each online-softmax sum rescaled to its image max. No block barrier: a warp
// past the last channel leaves.
template <typename acc>
__global__ void merge_kernel(const MergeArgs<acc> a) {
  const int64_t c = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / kWarp, n = blockIdx.y, C = a.C, tiles = a.tiles;
  if (c >= C) return;
  const acc* part = a.part + (n * kPartials * C + c) * tiles;  // + k * C * tiles + tile
  const acc* rescale = a.rescale + n * kSoftmaxes * tiles;
  KahanSum<acc> sums[kPartials];
  for (int64_t i = threadIdx.x % kWarp; i < tiles; i += kWarp) {
    const acc r_att = rescale[kAtt * tiles + i], r_s = rescale[kGcS * tiles + i], r_t = rescale[kGcT * tiles + i];
    sums[kAbsS] += part[kAbsS * C * tiles + i];
    sums[kAbsT] += part[kAbsT * C * tiles + i];
    sums[kDiff] += part[kDiff * C * tiles + i];
    sums[kFg] += part[kFg * C * tiles + i] * r_att;
    sums[kBg] += part[kBg * C * tiles + i] * r_att;
    sums[kCtxS] += part[kCtxS * C * tiles + i] * r_s;
    sums[kCtxT] += part[kCtxT * C * tiles + i] * r_t;
  }
  acc total[kPartials];
#pragma unroll
  for (int k = 0; k < kPartials; ++k) total[k] = warp_sum(sums[k].value());
  if (threadIdx.x % kWarp == 0) {
    const int64_t i = n * C + c;
    const acc* z = a.stats + n * kSoftmaxes * 2 + 1;  // + 2 k
    a.ks[i] = total[kAbsS];
    a.kt[i] = total[kAbsT];
    a.diff_sum[i] = total[kDiff];
    a.fg[i] = total[kFg];
    a.bg[i] = total[kBg];
    a.ctx_s[i] = total[kCtxS] / z[2 * kGcS];
    a.ctx_t[i] = total[kCtxT] / z[2 * kGcT];
  }
}

// One block: terms = (L_fg, L_bg, L_att), loss and diff_sq. With A_S^t = H*W exp(. - max) / z_att,
// N L_fg = sum_n H*W / z_att[n] sum_c A_C^t[n, c] fg[n, c] (fg: merge_kernel's rescaled sums).
template <typename acc>
__global__ void finalize_kernel(const acc* __restrict__ t_channel, const acc* __restrict__ fg,
                                const acc* __restrict__ bg, const acc* __restrict__ stats,
                                const acc* __restrict__ att_part, const acc* __restrict__ tile_sq, int64_t N,
                                int64_t C, int64_t HW, int64_t tasks, acc alpha, acc beta, acc gamma,
                                acc* __restrict__ loss, acc* __restrict__ terms, acc* __restrict__ diff_sq) {
  KahanSum<acc> local_f, local_b, local_a, local_sq;
  for (int64_t i = threadIdx.x; i < N * C; i += blockDim.x) {
    const acc w = t_channel[i] * static_cast<acc>(HW) / stats[((i / C) * kSoftmaxes + kAtt) * 2 + 1];
    local_f += w * fg[i];
    local_b += w * bg[i];
  }
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) local_a += att_part[i];
  for (int64_t i = threadIdx.x; i < tasks; i += blockDim.x) local_sq += tile_sq[i];
  const acc f = block_sum(local_f.value());
  const acc b = block_sum(local_b.value());
  const acc att = block_sum(local_a.value());
  const acc sq = block_sum(local_sq.value());
  if (threadIdx.x == 0) {
    store_focal_loss<acc>(f, b, att, N, alpha, beta, gamma, terms, loss);
    diff_sq[0] = sq;
  }
}

// In place over the logits: probs = exp(l - max) / z, the student's (blockIdx.z = 0) or teacher's GcBlock.
template <typename acc>
__global__ void probs_kernel(acc* __restrict__ probs_s, acc* __restrict__ probs_t, const acc* __restrict__ stats,
                             int64_t HW) {
  const int64_t n = blockIdx.y, j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int k = blockIdx.z == 0 ? kGcS : kGcT;
  acc* p = (blockIdx.z == 0 ? probs_s : probs_t) + n * HW;
  const acc* st = stats + (n * kSoftmaxes + k) * 2;
  if (j < HW) p[j] = math::exp_<acc>(p[j] - st[0]) / st[1];
}

using Tensor = at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
fgd_feature_pass_cuda(const Tensor& student_in, const Tensor& teacher_in, const Tensor& fg_in, const Tensor& bg_in,
                      const Tensor& weight_s_in, const Tensor& bias_s_in, const Tensor& weight_t_in,
                      const Tensor& bias_t_in, double temperature, double alpha, double beta, double gamma) {
  check_fgd_feature_pass_args(student_in, teacher_in, fg_in, bg_in, weight_s_in, bias_s_in, weight_t_in, bias_t_in,
                              temperature);
  const c10::cuda::CUDAGuard guard(student_in.device());
  const Tensor s = student_in.contiguous(), t = teacher_in.contiguous(), fg = fg_in.contiguous(),
               bg = bg_in.contiguous(), ws = weight_s_in.contiguous(), bs = bias_s_in.contiguous(),
               wt = weight_t_in.contiguous(), bt = bias_t_in.contiguous();
  const int64_t N = s.size(0), C = s.size(1), H = s.size(2), W = s.size(3), HW = H * W;
  const auto opts = s.options().dtype(acc_dtype(s.scalar_type()));
  Tensor loss = at::zeros({}, opts), terms = at::zeros({3}, opts), diff_sq = at::zeros({}, opts);
  Tensor ctx_s = at::empty({N, C}, opts), ctx_t = at::empty({N, C}, opts), diff_sum = at::empty({N, C}, opts);
  Tensor t_spatial = at::empty({N, H, W}, opts), t_channel = at::empty({N, C}, opts);
  Tensor pixel_att = at::empty({N, H, W}, opts), channel_att = at::empty({N, C}, opts);
  Tensor probs_s = at::empty({N, H, W}, opts), probs_t = at::empty({N, H, W}, opts);
  const auto outputs = std::make_tuple(loss, terms, ctx_s, ctx_t, diff_sq, diff_sum, t_spatial, t_channel, pixel_att,
                                       channel_att, probs_s, probs_t);
  if (N == 0) return outputs;
  TORCH_CHECK(N <= 65535, "kdops.fgd_feature_pass: at most 65535 images per call on CUDA, got N = ", N);
  const int64_t tiles = (HW + kTile - 1) / kTile;
  Tensor s_spatial = at::empty({N, HW}, opts), s_channel = at::empty({N, C}, opts);
  Tensor part = at::empty({N, kPartials, C, tiles}, opts);
  Tensor tile_max = at::empty({N, kSoftmaxes, tiles}, opts), tile_sum = at::empty_like(tile_max);
  Tensor rescale = at::empty_like(tile_max), stats = at::empty({N, kSoftmaxes, 2}, opts);
  Tensor tile_sq = at::empty({N, tiles}, opts), fg_sum = at::empty({N, C}, opts), bg_sum = at::empty({N, C}, opts);
  Tensor att_part = at::empty({N}, opts);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_fgd_feature_pass_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc inv_temp = acc(1) / static_cast<acc>(temperature);
    const acc pixel_scale = inv_temp / static_cast<acc>(C);
    const ForwardArgs<scalar_t, acc> fa{
        s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), fg.const_data_ptr<acc>(), bg.const_data_ptr<acc>(),
        ws.const_data_ptr<acc>(),     bs.const_data_ptr<acc>(),     wt.const_data_ptr<acc>(), bt.const_data_ptr<acc>(),
        pixel_scale,                  C,                            HW,                       s_spatial.data_ptr<acc>(),
        t_spatial.data_ptr<acc>(),    probs_s.data_ptr<acc>(),      probs_t.data_ptr<acc>(),  part.data_ptr<acc>(),
        tile_max.data_ptr<acc>(),     tile_sum.data_ptr<acc>(),     tile_sq.data_ptr<acc>()};
    partial_kernel<scalar_t, acc><<<dim3(static_cast<unsigned int>(tiles), static_cast<unsigned int>(N)), kThreads, 0, stream>>>(fa);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    softmax_merge_kernel<acc><<<N, 256, 0, stream>>>(tile_max.const_data_ptr<acc>(), tile_sum.const_data_ptr<acc>(),
                                                     rescale.data_ptr<acc>(), stats.data_ptr<acc>(), tiles,
                                                     fa.att_scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const MergeArgs<acc> ma{part.const_data_ptr<acc>(), rescale.const_data_ptr<acc>(), stats.const_data_ptr<acc>(),
                            C,                          tiles,                         s_channel.data_ptr<acc>(),
                            t_channel.data_ptr<acc>(),  diff_sum.data_ptr<acc>(),      fg_sum.data_ptr<acc>(),
                            bg_sum.data_ptr<acc>(),     ctx_s.data_ptr<acc>(),         ctx_t.data_ptr<acc>()};
    const dim3 merge_grid(static_cast<unsigned int>((C + kRowWarps - 1) / kRowWarps), static_cast<unsigned int>(N));
    merge_kernel<acc><<<merge_grid, kRowWarps * kWarp, 0, stream>>>(ma);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_attention<acc>(s_spatial.data_ptr<acc>(), t_spatial.data_ptr<acc>(), s_channel.data_ptr<acc>(),
                          t_channel.data_ptr<acc>(), pixel_att.data_ptr<acc>(), channel_att.data_ptr<acc>(),
                          att_part.data_ptr<acc>(), N, C, HW, inv_temp, stream);
    finalize_kernel<acc><<<1, 1024, 0, stream>>>(
        t_channel.const_data_ptr<acc>(), fg_sum.const_data_ptr<acc>(), bg_sum.const_data_ptr<acc>(),
        stats.const_data_ptr<acc>(), att_part.const_data_ptr<acc>(), tile_sq.const_data_ptr<acc>(), N, C, HW,
        N * tiles, static_cast<acc>(alpha), static_cast<acc>(beta), static_cast<acc>(gamma), loss.data_ptr<acc>(),
        terms.data_ptr<acc>(), diff_sq.data_ptr<acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    probs_kernel<acc><<<dim3(static_cast<unsigned int>((HW + 255) / 256), static_cast<unsigned int>(N), 2), 256, 0, stream>>>(
        probs_s.data_ptr<acc>(), probs_t.data_ptr<acc>(), stats.const_data_ptr<acc>(), HW);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return outputs;
}

template <typename scalar_t, typename acc>
struct BackwardArgs {
  const acc *grad_loss, *grad_terms, *grad_diff_sq;     // (), (3,), (): read on the device
  const acc *g_s, *g_t, *shift, *ctx_s, *ctx_t;         // (N, C): dL/d ctx_s, ctx_t, diff_sum; the contexts
  const acc *t_channel, *channel_att, *ws;              // (N, C), (N, C), (C,)
  const acc *fg, *bg, *t_spatial, *pixel_att, *probs_s, *probs_t;  // (N, HW)
  const scalar_t *s, *t;
  acc two_over_n, alpha, beta, gamma;
  int64_t C, HW;
  scalar_t* out;
  acc* dw_part;  // (2, C, N * tiles): per-tile sums of dl_j F[c, j], student then teacher
};

template <typename scalar_t, typename acc>
__global__ void grad_kernel(const BackwardArgs<scalar_t, acc> a) {
  __shared__ acc shares[2][kWarps][kTile];  // the warps' shares of u_j, student then teacher
  __shared__ acc ubar_shares[2][kWarps];     // and of ubar
  const int64_t C = a.C, HW = a.HW, n = blockIdx.y, tile = blockIdx.x, tasks = gridDim.x * int64_t(gridDim.y);
  const int64_t task = n * gridDim.x + tile;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const Pixels px(tile, HW);
  const scalar_t* s = a.s + n * C * HW;
  const scalar_t* t = a.t + n * C * HW;
  scalar_t* out = a.out + n * C * HW;
  const acc *g_s = a.g_s + n * C, *g_t = a.g_t + n * C;
  // ubar = g . ctx = sum_j p_j u_j is summed in the order of u_j, so that u_j - ubar cancels exactly
  // where it should (H*W = 1: ctx = F, dl = 0).
  acc dl_s[kPerLane] = {}, dl_t[kPerLane] = {}, ubar_s = 0, ubar_t = 0;  // u_j until the shares are added
  for (int64_t c = warp; c < C; c += kWarps) {
    const acc gsc = g_s[c], gtc = g_t[c];
    ubar_s += gsc * a.ctx_s[n * C + c];
    ubar_t += gtc * a.ctx_t[n * C + c];
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) {
      if (!px.ok[v]) continue;
      dl_s[v] += gsc * static_cast<acc>(s[c * HW + px.j[v]]);
      dl_t[v] += gtc * static_cast<acc>(t[c * HW + px.j[v]]);
    }
  }
#pragma unroll
  for (int v = 0; v < kPerLane; ++v) {
    shares[0][warp][v * kWarp + lane] = dl_s[v];
    shares[1][warp][v * kWarp + lane] = dl_t[v];
  }
  if (lane == 0) {
    ubar_shares[0][warp] = ubar_s;
    ubar_shares[1][warp] = ubar_t;
  }
  __syncthreads();
  add_shares(shares, 0, acc(0), dl_s);
  add_shares(shares, 1, acc(0), dl_t);
  ubar_s = ubar_t = 0;
  for (int w = 0; w < kWarps; ++w) {
    ubar_s += ubar_shares[0][w];
    ubar_t += ubar_shares[1][w];
  }

  const acc gl = a.grad_loss[0];
  const acc c_fg = a.alpha * gl + a.grad_terms[0], c_bg = a.beta * gl + a.grad_terms[1];
  const acc c_att = a.gamma * gl + a.grad_terms[2], diff_coef = acc(2) * a.grad_diff_sq[0];
  acc p_s[kPerLane], mask_coef[kPerLane], spatial[kPerLane], pixel_att[kPerLane];
#pragma unroll
  for (int v = 0; v < kPerLane; ++v) {
    const int64_t i = n * HW + px.j[v];
    const bool ok = px.ok[v];
    p_s[v] = ok ? a.probs_s[i] : acc(0);
    dl_s[v] = gc::logit_grad<acc>(p_s[v], dl_s[v], ubar_s);
    dl_t[v] = gc::logit_grad<acc>(ok ? a.probs_t[i] : acc(0), dl_t[v], ubar_t);
    mask_coef[v] = ok ? focal::mask_coef<acc>(a.two_over_n, c_fg, a.fg[i], c_bg, a.bg[i]) : acc(0);
    spatial[v] = ok ? a.t_spatial[i] : acc(0);
    pixel_att[v] = ok ? weighted<acc>(c_att, a.pixel_att[i]) : acc(0);  // c_att = 0: no attention term at all
  }

  for (int64_t c = warp; c < C; c += kWarps) {  // again: from L2 while it holds the slice
    const acc cw = a.t_channel[n * C + c], cat = weighted<acc>(c_att, a.channel_att[n * C + c]);
    const acc shift = a.shift[n * C + c];
    const acc gsc = g_s[c], wsc = a.ws[c];
    acc dws = 0, dwt = 0;
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) {
      if (!px.ok[v]) continue;
      const int64_t i = c * HW + px.j[v];
      const scalar_t x = s[i], y = t[i];
      out[i] = feature_pass::grad_student<acc, scalar_t>(x, y, mask_coef[v], spatial[v], cw, pixel_att[v], cat,
                                                         diff_coef, shift, p_s[v], gsc, wsc, dl_s[v]);
      dws += dl_s[v] * static_cast<acc>(x);
      dwt += dl_t[v] * static_cast<acc>(y);
    }
    dws = warp_sum(dws);
    dwt = warp_sum(dwt);
    if (lane == 0) {
      a.dw_part[c * tasks + task] = dws;
      a.dw_part[(C + c) * tasks + task] = dwt;
    }
  }
}

// One warp per (channel, side): grad_weight[c] = the tiles' partials added in tile order.
template <typename acc>
__global__ void weight_grad_kernel(const acc* __restrict__ dw_part, acc* __restrict__ grad_ws,
                                   acc* __restrict__ grad_wt, int64_t C, int64_t tasks) {
  const int64_t c = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / kWarp, side = blockIdx.y;
  if (c >= C) return;
  const acc* row = dw_part + (side * C + c) * tasks;
  KahanSum<acc> local;
  for (int64_t i = threadIdx.x % kWarp; i < tasks; i += kWarp) local += row[i];
  const acc total = warp_sum(local.value());
  if (threadIdx.x % kWarp == 0) (side == 0 ? grad_ws : grad_wt)[c] = total;
}

std::tuple<Tensor, Tensor, Tensor> fgd_feature_pass_backward_cuda(
    const Tensor& grad_loss, const Tensor& grad_terms, const Tensor& grad_ctx_s, const Tensor& grad_ctx_t,
    const Tensor& grad_diff_sq, const Tensor& grad_diff_sum, const Tensor& student_in, const Tensor& teacher_in,
    const Tensor& fg, const Tensor& bg, const Tensor& weight_s, const Tensor& weight_t, const Tensor& ctx_s,
    const Tensor& ctx_t, const Tensor& teacher_spatial, const Tensor& teacher_channel, const Tensor& pixel_att_grad,
    const Tensor& channel_att_grad, const Tensor& probs_s, const Tensor& probs_t, double alpha, double beta,
    double gamma) {
  // The checks cover every input's shape, dtype and device: the scalar gradients are 0-dim tensors on the
  // features' device (a CPU scalar read by the kernel would be an illegal address).
  const FeaturePassGrads grads{grad_loss.contiguous(),    grad_terms.contiguous(),   grad_ctx_s.contiguous(),
                               grad_ctx_t.contiguous(),   grad_diff_sq.contiguous(), grad_diff_sum.contiguous()};
  const FeaturePassSaved saved{teacher_spatial.contiguous(),  teacher_channel.contiguous(), pixel_att_grad.contiguous(),
                               channel_att_grad.contiguous(), probs_s.contiguous(),         probs_t.contiguous()};
  check_fgd_feature_pass_backward_args(grads, student_in, teacher_in, fg, bg, weight_s, weight_t, ctx_s, ctx_t, saved);
  const c10::cuda::CUDAGuard guard(student_in.device());
  const Tensor s = student_in.contiguous(), t = teacher_in.contiguous();
  Tensor grad = at::empty_like(s, at::MemoryFormat::Contiguous);
  Tensor grad_ws = at::zeros_like(weight_s), grad_wt = at::zeros_like(weight_t);
  if (s.numel() == 0) return {grad, grad_ws, grad_wt};
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  TORCH_CHECK(N <= 65535, "kdops.fgd_feature_pass_backward: at most 65535 images per call on CUDA, got N = ", N);
  const int64_t tiles = (HW + kTile - 1) / kTile;
  Tensor dw_part = at::empty({2, C, N * tiles}, grad_ws.options());
  const Tensor fg_c = fg.contiguous(), bg_c = bg.contiguous(), ws = weight_s.contiguous();
  const Tensor ctx_s_c = ctx_s.contiguous(), ctx_t_c = ctx_t.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_fgd_feature_pass_backward_cuda", [&] {
        using acc = acc_t<scalar_t>;
        const BackwardArgs<scalar_t, acc> ba{grads.loss.const_data_ptr<acc>(),
                                             grads.terms.const_data_ptr<acc>(),
                                             grads.diff_sq.const_data_ptr<acc>(),
                                             grads.ctx_s.const_data_ptr<acc>(),
                                             grads.ctx_t.const_data_ptr<acc>(),
                                             grads.diff_sum.const_data_ptr<acc>(),
                                             ctx_s_c.const_data_ptr<acc>(),
                                             ctx_t_c.const_data_ptr<acc>(),
                                             saved.teacher_channel.const_data_ptr<acc>(),
                                             saved.channel_att_grad.const_data_ptr<acc>(),
                                             ws.const_data_ptr<acc>(),
                                             fg_c.const_data_ptr<acc>(),
                                             bg_c.const_data_ptr<acc>(),
                                             saved.teacher_spatial.const_data_ptr<acc>(),
                                             saved.pixel_att_grad.const_data_ptr<acc>(),
                                             saved.probs_s.const_data_ptr<acc>(),
                                             saved.probs_t.const_data_ptr<acc>(),
                                             s.const_data_ptr<scalar_t>(),
                                             t.const_data_ptr<scalar_t>(),
                                             acc(2) / static_cast<acc>(N),
                                             static_cast<acc>(alpha),
                                             static_cast<acc>(beta),
                                             static_cast<acc>(gamma),
                                             C,
                                             HW,
                                             grad.data_ptr<scalar_t>(),
                                             dw_part.data_ptr<acc>()};
        grad_kernel<scalar_t, acc><<<dim3(static_cast<unsigned int>(tiles), static_cast<unsigned int>(N)), kThreads, 0, stream>>>(ba);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const dim3 rows_grid(static_cast<unsigned int>((C + kRowWarps - 1) / kRowWarps), 2);
        weight_grad_kernel<acc><<<rows_grid, kRowWarps * kWarp, 0, stream>>>(dw_part.const_data_ptr<acc>(),
                                                                grad_ws.data_ptr<acc>(), grad_wt.data_ptr<acc>(), C,
                                                                N * tiles);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad, grad_ws, grad_wt};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CUDA, m) {
  m.impl("fgd_feature_pass", &fgd_feature_pass_cuda);
  m.impl("fgd_feature_pass_backward", &fgd_feature_pass_backward_cuda);
}

}  // namespace kdops
