// CPU kernels of the FGD feature pass (csrc/ops/fgd_feature_pass.cpp): one FGD level's focal loss, both
// GcBlock contexts and the relation loss' feature sums in one pass over S and T each way. The separate
// ops read S and T eight times forward and six times backward, and autograd adds three student
// gradients; at FPN P2..P6 on a 2-core CPU that memory traffic is most of an FGD step.
//
// Work is split into tasks of (image, pixel block), a block small enough that both features' slices
// stay in L2 between two sweeps over their channels:
// forward  sweep 1 (from memory): per-pixel sums of |S|, |T| and both GcBlock logits; per-channel sums
//          of |S|, |T|, S - T; the block's sum (S - T)^2.
//          sweep 2 (from L2): with block-local softmax maxima, per channel sum_j w_j (S - T)^2 under
//          M_fg and M_bg (w_j the unnormalised teacher pixel attention) and the partial contexts
//          sum_j exp(l_j - max) F[c, j] of both sides.
//          Per image, the blocks are merged in block order, rescaled to the global maxima (online
//          softmax), so the results do not depend on the thread count.
// backward sweep 1: u_j = g . F[:, j] for both GcBlocks, then dl_j = p_j (u_j - g . ctx);
//          sweep 2: dS (feature_pass::grad_student) and the partial GcBlock weight gradients.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "fgd_attention.h"
#include "gradient_buffer.h"
#include "isa.h"
#include "parallel.h"
#include "row_math.h"
#include "kdops/layout.h"
#include "kdops/math/fgd_feature_pass.h"
#include "kdops/math/transcendental.h"
#include "../ops/fgd_feature_pass.h"

namespace kdops {
namespace {

// Per-task scratch: kPartials per-channel partial sums and kSoftmaxes online softmaxes (kdops/layout.h).
using namespace feature_pass;

// Pixels per task: both features' slices (2 * C * block elements) take about 1 MiB, half of L2.
int64_t pixel_block(int64_t C, int64_t elem_size) {
  return std::max<int64_t>(16, std::min<int64_t>(4096, (int64_t(1) << 20) / (2 * C * elem_size)));
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
struct ForwardArgs {
  const scalar_t *s, *t;
  const acc *fg, *bg, *ws, *wt;
  acc bs, bt, att_scale;  // att_scale = 1 / (temperature * C): the teacher pixel attention's logit scale
  int64_t C, HW, block, blocks;
  acc *ms, *mt, *ls, *lt;  // (N, HW): pixel sums of |S|, |T|; GcBlock logits of S, T
  acc *partial;            // (tasks, kPartials, C)
  acc *block_max, *block_sum;  // (tasks, kSoftmaxes)
  acc* block_sq;               // (tasks,)
};

// Block max of x and the weights e[j] = exp((x[j] - max) * scale); returns sum e. Shifted before scaled: at
// 1 / temperature = 1e30, x * scale - max fused into one FMA is exp(+-1e23) at the max itself.
template <typename acc>
KDOPS_VEC_HD acc block_softmax(const acc* x, acc scale, int64_t len, acc* e, acc& mx_out) {
  acc mx = -std::numeric_limits<acc>::infinity(), total = 0;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < len; ++j) mx = std::max(mx, x[j]);
#pragma omp simd reduction(+ : total)
  for (int64_t j = 0; j < len; ++j) {
    e[j] = math::exp_<acc>((x[j] - mx) * scale);
    total += e[j];
  }
  mx_out = mx;
  return total;
}

// One (image, pixel block) task of the forward. scratch: 3 * block.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void forward_block(const ForwardArgs<scalar_t>& a, int64_t task, acc* scratch) {
  const int64_t C = a.C, HW = a.HW, n = task / a.blocks, p0 = (task % a.blocks) * a.block;
  const int64_t len = std::min(a.block, HW - p0);
  acc *ms = a.ms + n * HW + p0, *mt = a.mt + n * HW + p0, *ls = a.ls + n * HW + p0, *lt = a.lt + n * HW + p0;
  acc* part = a.partial + task * kPartials * C;
  std::fill(ms, ms + len, acc(0));
  std::fill(mt, mt + len, acc(0));
  std::fill(ls, ls + len, a.bs);
  std::fill(lt, lt + len, a.bt);
  acc sq = 0;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* sr = a.s + (n * C + c) * HW + p0;
    const scalar_t* tr = a.t + (n * C + c) * HW + p0;
    const acc wsc = a.ws[c], wtc = a.wt[c];
    acc ks = 0, kt = 0, ds = 0;
#pragma omp simd reduction(+ : ks, kt, ds, sq)
    for (int64_t j = 0; j < len; ++j) {
      const acc x = static_cast<acc>(sr[j]), y = static_cast<acc>(tr[j]), d = x - y;
      ms[j] += std::abs(x);
      mt[j] += std::abs(y);
      ls[j] += wsc * x;
      lt[j] += wtc * y;
      ks += std::abs(x);
      kt += std::abs(y);
      ds += d;
      sq += d * d;
    }
    part[kAbsS * C + c] = ks;
    part[kAbsT * C + c] = kt;
    part[kDiff * C + c] = ds;
  }
  a.block_sq[task] = sq;

  acc *e_att = scratch, *e_s = scratch + a.block, *e_t = scratch + 2 * a.block;
  acc* stat_max = a.block_max + task * kSoftmaxes;
  acc* stat_sum = a.block_sum + task * kSoftmaxes;
  stat_sum[kAtt] = block_softmax<acc>(mt, a.att_scale, len, e_att, stat_max[kAtt]);
  const acc* fg = a.fg + n * HW + p0;
  const acc* bg = a.bg + n * HW + p0;
  stat_sum[kGcS] = block_softmax<acc>(ls, acc(1), len, e_s, stat_max[kGcS]);
  stat_sum[kGcT] = block_softmax<acc>(lt, acc(1), len, e_t, stat_max[kGcT]);

  for (int64_t c = 0; c < C; ++c) {  // the block is in L2 now
    const scalar_t* sr = a.s + (n * C + c) * HW + p0;
    const scalar_t* tr = a.t + (n * C + c) * HW + p0;
    acc qf = 0, qb = 0, cs = 0, ct = 0;
#pragma omp simd reduction(+ : qf, qb, cs, ct)
    for (int64_t j = 0; j < len; ++j) {
      const acc x = static_cast<acc>(sr[j]), y = static_cast<acc>(tr[j]), d2 = (x - y) * (x - y);
      const acc a2 = e_att[j] * d2;
      qf += weighted<acc>(fg[j], a2);  // a pixel where a mask is 0 adds exactly 0
      qb += weighted<acc>(bg[j], a2);
      cs += e_s[j] * x;
      ct += e_t[j] * y;
    }
    part[kFg * C + c] = qf;
    part[kBg * C + c] = qb;
    part[kCtxS * C + c] = cs;
    part[kCtxT * C + c] = ct;
  }
}

struct ForwardOutputs {
  at::Tensor loss, terms, ctx_s, ctx_t, diff_sq, diff_sum, t_spatial, t_channel, pixel_att, channel_att, probs_s,
      probs_t;
};

template <typename scalar_t>
void forward_impl(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& fg, const at::Tensor& bg,
                  const at::Tensor& weight_s, const at::Tensor& bias_s, const at::Tensor& weight_t,
                  const at::Tensor& bias_t, double temperature, double alpha, double beta, double gamma,
                  ForwardOutputs& out) {
  using acc = acc_t<scalar_t>;
  const int64_t N = student.size(0), C = student.size(1), HW = student.size(2) * student.size(3);
  const int64_t block = pixel_block(C, sizeof(scalar_t)), blocks = (HW + block - 1) / block, tasks = N * blocks;
  const acc inv_temp = acc(1) / static_cast<acc>(temperature), inv_n = acc(1) / static_cast<acc>(N);
  std::vector<acc> ms(N * HW), partial(tasks * kPartials * C), block_max(tasks * kSoftmaxes),
      block_sum(tasks * kSoftmaxes), block_sq(tasks);
  ForwardArgs<scalar_t> a{student.const_data_ptr<scalar_t>(), teacher.const_data_ptr<scalar_t>(),
                          fg.const_data_ptr<acc>(), bg.const_data_ptr<acc>(), weight_s.const_data_ptr<acc>(),
                          weight_t.const_data_ptr<acc>(), bias_s.const_data_ptr<acc>()[0],
                          bias_t.const_data_ptr<acc>()[0], inv_temp / static_cast<acc>(C), C, HW, block, blocks,
                          ms.data(), out.t_spatial.data_ptr<acc>(), out.probs_s.data_ptr<acc>(),
                          out.probs_t.data_ptr<acc>(), partial.data(), block_max.data(), block_sum.data(),
                          block_sq.data()};
  cpu::parallel_chunks(tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> scratch(3 * block);
    for (int64_t task = begin; task < end; ++task) forward_block<scalar_t>(a, task, scratch.data());
  });

  // Per image: merge the blocks in order (rescaled to the global softmax maxima), then the masks,
  // the attention loss and the GcBlock softmaxes.
  acc* ctx_s = out.ctx_s.data_ptr<acc>();
  acc* ctx_t = out.ctx_t.data_ptr<acc>();
  acc* diff_sum = out.diff_sum.data_ptr<acc>();
  acc* kt_all = out.t_channel.data_ptr<acc>();  // |T| channel sums until attention_image makes them A_C^t
  std::vector<double> fg_part(N), bg_part(N), att_part(N);
  cpu::parallel_chunks(N, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> rescale(kSoftmaxes * blocks), ks(C);
    std::vector<double> sums(kPartials * C);  // block results added in double: a plane has up to 2^22 blocks
    for (int64_t n = begin; n < end; ++n) {
      acc gmax[kSoftmaxes];
      double z[kSoftmaxes];
      for (int k = 0; k < kSoftmaxes; ++k) {
        gmax[k] = -std::numeric_limits<acc>::infinity();
        z[k] = 0;
        for (int64_t b = 0; b < blocks; ++b) gmax[k] = std::max(gmax[k], block_max[(n * blocks + b) * kSoftmaxes + k]);
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t i = (n * blocks + b) * kSoftmaxes + k;
          rescale[k * blocks + b] = std::exp((block_max[i] - gmax[k]) * (k == kAtt ? a.att_scale : acc(1)));
          z[k] += static_cast<double>(block_sum[i] * rescale[k * blocks + b]);
        }
      }
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t b = 0; b < blocks; ++b) {
        const acc* part = partial.data() + (n * blocks + b) * kPartials * C;
        const acc r_att = rescale[kAtt * blocks + b], r_s = rescale[kGcS * blocks + b],
                  r_t = rescale[kGcT * blocks + b];
        for (int64_t c = 0; c < C; ++c) {
          sums[kAbsS * C + c] += part[kAbsS * C + c];
          sums[kAbsT * C + c] += part[kAbsT * C + c];
          sums[kDiff * C + c] += part[kDiff * C + c];
          sums[kFg * C + c] += part[kFg * C + c] * r_att;
          sums[kBg * C + c] += part[kBg * C + c] * r_att;
          sums[kCtxS * C + c] += part[kCtxS * C + c] * r_s;
          sums[kCtxT * C + c] += part[kCtxT * C + c] * r_t;
        }
      }
      acc *kt = kt_all + n * C, *cs = ctx_s + n * C, *ct = ctx_t + n * C, *dsum = diff_sum + n * C;
      for (int64_t c = 0; c < C; ++c) {
        ks[c] = static_cast<acc>(sums[kAbsS * C + c]);
        kt[c] = static_cast<acc>(sums[kAbsT * C + c]);
        dsum[c] = static_cast<acc>(sums[kDiff * C + c]);
        cs[c] = static_cast<acc>(sums[kCtxS * C + c] / z[kGcS]);
        ct[c] = static_cast<acc>(sums[kCtxT * C + c] / z[kGcT]);
      }
      att_part[n] = cpu::attention_image<acc>(ks.data(), kt, ms.data() + n * HW, a.mt + n * HW,
                                              out.channel_att.data_ptr<acc>() + n * C,
                                              out.pixel_att.data_ptr<acc>() + n * HW, C, HW, inv_n, inv_temp);
      // sum_j M_j A_S^t_j (S - T)^2 = H*W / z * (the rescaled block sums), per channel, weighted by A_C^t.
      const double pixel_norm = static_cast<double>(HW) / z[kAtt];
      double lf = 0, lb = 0;
      for (int64_t c = 0; c < C; ++c) {
        lf += kt[c] * sums[kFg * C + c];
        lb += kt[c] * sums[kBg * C + c];
      }
      fg_part[n] = lf * pixel_norm;
      bg_part[n] = lb * pixel_norm;
      for (const auto& [k, logits] : {std::pair{kGcS, a.ls}, std::pair{kGcT, a.lt}}) {
        acc* p = logits + n * HW;
        const acc mx = gmax[k], inv_z = static_cast<acc>(1.0 / z[k]);
#pragma omp simd
        for (int64_t j = 0; j < HW; ++j) p[j] = math::exp_<acc>(p[j] - mx) * inv_z;
      }
    }
  });

  double l_fg = 0, l_bg = 0, l_att = 0, sq = 0;
  for (int64_t n = 0; n < N; ++n) {
    l_fg += fg_part[n];
    l_bg += bg_part[n];
    l_att += att_part[n];
  }
  for (acc v : block_sq) sq += v;
  acc* tm = out.terms.data_ptr<acc>();
  tm[0] = static_cast<acc>(l_fg / N);
  tm[1] = static_cast<acc>(l_bg / N);
  tm[2] = static_cast<acc>(l_att / N);
  out.loss.fill_(focal::weighted_loss<acc>(static_cast<acc>(alpha), tm[0], static_cast<acc>(beta), tm[1],
                                           static_cast<acc>(gamma), tm[2]));
  out.diff_sq.fill_(sq);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor, at::Tensor>
fgd_feature_pass_cpu(const at::Tensor& student_in, const at::Tensor& teacher_in, const at::Tensor& fg_in,
                     const at::Tensor& bg_in, const at::Tensor& weight_s, const at::Tensor& bias_s,
                     const at::Tensor& weight_t, const at::Tensor& bias_t, double temperature, double alpha,
                     double beta, double gamma) {
  check_fgd_feature_pass_args(student_in, teacher_in, fg_in, bg_in, weight_s, bias_s, weight_t, bias_t, temperature);
  const at::Tensor student = student_in.contiguous(), teacher = teacher_in.contiguous();
  const int64_t N = student.size(0), C = student.size(1), H = student.size(2), W = student.size(3);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  ForwardOutputs out{at::zeros({}, opts),        at::zeros({3}, opts),       at::zeros({N, C}, opts),
                     at::zeros({N, C}, opts),    at::zeros({}, opts),        at::zeros({N, C}, opts),
                     at::empty({N, H, W}, opts), at::empty({N, C}, opts),    at::empty({N, H, W}, opts),
                     at::empty({N, C}, opts),    at::empty({N, H, W}, opts), at::empty({N, H, W}, opts)};
  if (N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kdops_fgd_feature_pass_cpu", [&] {
      forward_impl<scalar_t>(student, teacher, fg_in.contiguous(), bg_in.contiguous(), weight_s.contiguous(),
                             bias_s.contiguous(), weight_t.contiguous(), bias_t.contiguous(), temperature, alpha,
                             beta, gamma, out);
    });
  }
  return {out.loss,     out.terms,     out.ctx_s,     out.ctx_t,       out.diff_sq, out.diff_sum,
          out.t_spatial, out.t_channel, out.pixel_att, out.channel_att, out.probs_s, out.probs_t};
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
struct BackwardArgs {
  const scalar_t *s, *t;
  const acc *mask_coef, *t_spatial, *pixel_att, *probs_s, *probs_t;  // (N, HW)
  const acc *channel_weight, *channel_att, *shift, *g_s, *g_t;    // (N, C)
  const acc *ws, *ubar_s, *ubar_t;                                // (C,), (N,), (N,)
  acc diff_coef;
  int64_t C, HW, block, blocks;
  scalar_t* out;
  acc* dw_part;  // (tasks, 2, C)
};

// One (image, pixel block) task of the backward. scratch: 2 * block.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void backward_block(const BackwardArgs<scalar_t>& a, int64_t task, acc* scratch) {
  const int64_t C = a.C, HW = a.HW, n = task / a.blocks, p0 = (task % a.blocks) * a.block;
  const int64_t len = std::min(a.block, HW - p0);
  acc *dl_s = scratch, *dl_t = scratch + a.block;
  const acc *gs = a.g_s + n * C, *gt = a.g_t + n * C;
  std::fill(dl_s, dl_s + len, acc(0));
  std::fill(dl_t, dl_t + len, acc(0));
  for (int64_t c = 0; c < C; ++c) {  // u_j = g . F[:, j] of both sides, accumulated in dl
    const scalar_t* sr = a.s + (n * C + c) * HW + p0;
    const scalar_t* tr = a.t + (n * C + c) * HW + p0;
    const acc gsc = gs[c], gtc = gt[c];
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      dl_s[j] += gsc * static_cast<acc>(sr[j]);
      dl_t[j] += gtc * static_cast<acc>(tr[j]);
    }
  }
  const acc *ps = a.probs_s + n * HW + p0, *pt = a.probs_t + n * HW + p0;
  const acc ubar_s = a.ubar_s[n], ubar_t = a.ubar_t[n];
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    dl_s[j] = gc::logit_grad<acc>(ps[j], dl_s[j], ubar_s);
    dl_t[j] = gc::logit_grad<acc>(pt[j], dl_t[j], ubar_t);
  }
  const acc *mc = a.mask_coef + n * HW + p0, *sp = a.t_spatial + n * HW + p0, *pat = a.pixel_att + n * HW + p0;
  acc* dw = a.dw_part + task * 2 * C;
  for (int64_t c = 0; c < C; ++c) {  // the block is in L2 now
    const scalar_t* sr = a.s + (n * C + c) * HW + p0;
    const scalar_t* tr = a.t + (n * C + c) * HW + p0;
    scalar_t* o = a.out + (n * C + c) * HW + p0;
    const acc cw = a.channel_weight[n * C + c], cat = a.channel_att[n * C + c], shift = a.shift[n * C + c];
    const acc gsc = gs[c], wsc = a.ws[c];
    acc dws = 0, dwt = 0;
#pragma omp simd reduction(+ : dws, dwt)
    for (int64_t j = 0; j < len; ++j) {
      o[j] = feature_pass::grad_student<acc, scalar_t>(sr[j], tr[j], mc[j], sp[j], cw, pat[j], cat, a.diff_coef, shift,
                                                        ps[j], gsc, wsc, dl_s[j]);
      dws += dl_s[j] * static_cast<acc>(sr[j]);
      dwt += dl_t[j] * static_cast<acc>(tr[j]);
    }
    dw[c] = dws;
    dw[C + c] = dwt;
  }
}

template <typename scalar_t>
void backward_impl(const FeaturePassGrads& grads, const at::Tensor& student, const at::Tensor& teacher,
                   const at::Tensor& fg, const at::Tensor& bg, const at::Tensor& weight_s, const at::Tensor& ctx_s,
                   const at::Tensor& ctx_t, const FeaturePassSaved& saved, double alpha, double beta, double gamma,
                   at::Tensor& grad, at::Tensor& grad_ws, at::Tensor& grad_wt) {
  using acc = acc_t<scalar_t>;
  const int64_t N = student.size(0), C = student.size(1), HW = student.size(2) * student.size(3);
  const int64_t block = pixel_block(C, sizeof(scalar_t)), blocks = (HW + block - 1) / block, tasks = N * blocks;
  // CPU tensors: reading the incoming gradients is a plain memory load, not a device sync.
  const acc gl = grads.loss.const_data_ptr<acc>()[0];
  const acc* gterms = grads.terms.const_data_ptr<acc>();
  const acc c_fg = static_cast<acc>(alpha) * gl + gterms[0], c_bg = static_cast<acc>(beta) * gl + gterms[1];
  const acc c_att = static_cast<acc>(gamma) * gl + gterms[2];
  const acc two_over_n = acc(2) / static_cast<acc>(N);
  const acc *fgp = fg.const_data_ptr<acc>(), *bgp = bg.const_data_ptr<acc>();
  const acc *t_sp = saved.teacher_spatial.const_data_ptr<acc>(), *pa = saved.pixel_att_grad.const_data_ptr<acc>();
  const acc *ca = saved.channel_att_grad.const_data_ptr<acc>();
  const acc *g_s = grads.ctx_s.const_data_ptr<acc>(), *g_t = grads.ctx_t.const_data_ptr<acc>();
  const acc *cs = ctx_s.const_data_ptr<acc>(), *ct = ctx_t.const_data_ptr<acc>();
  std::vector<acc> mask_coef(N * HW), pixel_att(N * HW), channel_att(N * C), ubar_s(N, acc(0)), ubar_t(N, acc(0));
  for (int64_t i = 0; i < N * HW; ++i) {
    mask_coef[i] = focal::mask_coef<acc>(two_over_n, c_fg, fgp[i], c_bg, bgp[i]);
    pixel_att[i] = weighted<acc>(c_att, pa[i]);  // gamma * g + G_att = 0: no attention term at all
  }
  for (int64_t i = 0; i < N * C; ++i) {
    channel_att[i] = weighted<acc>(c_att, ca[i]);
    ubar_s[i / C] += g_s[i] * cs[i];
    ubar_t[i / C] += g_t[i] * ct[i];
  }
  std::vector<acc> dw_part(tasks * 2 * C);
  BackwardArgs<scalar_t> a{student.const_data_ptr<scalar_t>(), teacher.const_data_ptr<scalar_t>(),
                           mask_coef.data(), t_sp, pixel_att.data(), saved.probs_s.const_data_ptr<acc>(),
                           saved.probs_t.const_data_ptr<acc>(), saved.teacher_channel.const_data_ptr<acc>(),
                           channel_att.data(), grads.diff_sum.const_data_ptr<acc>(), g_s, g_t,
                           weight_s.const_data_ptr<acc>(), ubar_s.data(), ubar_t.data(),
                           acc(2) * grads.diff_sq.const_data_ptr<acc>()[0], C, HW, block, blocks,
                           grad.data_ptr<scalar_t>(), dw_part.data()};
  cpu::parallel_chunks(tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc> scratch(2 * block);
    for (int64_t task = begin; task < end; ++task) backward_block<scalar_t>(a, task, scratch.data());
  });
  std::vector<double> dw_sum(2 * C);  // in double: a plane has up to 2^22 blocks
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t c = 0; c < 2 * C; ++c) dw_sum[c] += dw_part[task * 2 * C + c];
  acc *dws = grad_ws.data_ptr<acc>(), *dwt = grad_wt.data_ptr<acc>();
  for (int64_t c = 0; c < C; ++c) {
    dws[c] = static_cast<acc>(dw_sum[c]);
    dwt[c] = static_cast<acc>(dw_sum[C + c]);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fgd_feature_pass_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& grad_terms, const at::Tensor& grad_ctx_s,
    const at::Tensor& grad_ctx_t, const at::Tensor& grad_diff_sq, const at::Tensor& grad_diff_sum,
    const at::Tensor& student_in, const at::Tensor& teacher_in, const at::Tensor& fg, const at::Tensor& bg,
    const at::Tensor& weight_s, const at::Tensor& weight_t, const at::Tensor& ctx_s, const at::Tensor& ctx_t,
    const at::Tensor& teacher_spatial, const at::Tensor& teacher_channel, const at::Tensor& pixel_att_grad,
    const at::Tensor& channel_att_grad, const at::Tensor& probs_s, const at::Tensor& probs_t, double alpha,
    double beta, double gamma) {
  const FeaturePassGrads grads{grad_loss.contiguous(),    grad_terms.contiguous(),   grad_ctx_s.contiguous(),
                               grad_ctx_t.contiguous(),   grad_diff_sq.contiguous(), grad_diff_sum.contiguous()};
  const FeaturePassSaved saved{teacher_spatial.contiguous(),  teacher_channel.contiguous(), pixel_att_grad.contiguous(),
                               channel_att_grad.contiguous(), probs_s.contiguous(),         probs_t.contiguous()};
  check_fgd_feature_pass_backward_args(grads, student_in, teacher_in, fg, bg, weight_s, weight_t, ctx_s, ctx_t, saved);
  const at::Tensor student = student_in.contiguous(), teacher = teacher_in.contiguous();
  at::Tensor grad = cpu::empty_gradient_like(student);
  at::Tensor grad_ws = at::zeros_like(weight_s), grad_wt = at::zeros_like(weight_t);
  if (student.numel() == 0) return {grad, grad_ws, grad_wt};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, student.scalar_type(), "kdops_fgd_feature_pass_backward_cpu", [&] {
        backward_impl<scalar_t>(grads, student, teacher, fg.contiguous(), bg.contiguous(), weight_s.contiguous(),
                                ctx_s.contiguous(), ctx_t.contiguous(), saved, alpha, beta, gamma, grad, grad_ws,
                                grad_wt);
      });
  return {grad, grad_ws, grad_wt};
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("fgd_feature_pass", &fgd_feature_pass_cpu);
  m.impl("fgd_feature_pass_backward", &fgd_feature_pass_backward_cpu);
}

}  // namespace kdops
