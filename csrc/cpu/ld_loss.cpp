// CPU kernels of localization distillation (docs/math.md §11). Forward: per row of n bins, one pass for the
// maxima and one for the exp-sums and near-row moments of CWD's row math (math/cwd_loss.h); the rows' weighted
// terms and weights are summed in fixed chunks added in order (deterministic). A row of weight 0 is not read.
// Backward: one pass per row from the saved statistics. Rows are short (16 or 17 bins): each runs its vector
// body over whole blocks of 16 and once more over its last 16 bins, masked (row_tail.h).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "chunked_sum.h"
#include "gradient_buffer.h"
#include "isa.h"
#include "parallel.h"
#include "row_math.h"
#include "row_tail.h"
#include "kdops/math/ld_loss.h"
#include "../ops/ld_loss.h"

namespace kdops {
namespace {

using namespace cwd;  // the row statistics and the row math are CWD's

template <typename acc>
struct RowSums {
  acc s = 0, t = 0, a = 0, m1 = 0, m2 = 0, zmax = 0;  // sum_s, sum_t, A, M1, M2, max |z| of math/cwd_loss.h
};

// Adds items [0, n) of one row to `sums`; with kMasked, an item of mask 0 adds exactly 0 (a select: the item
// may be -inf, and 0 * inf is NaN).
template <bool kMasked, typename T, typename acc>
KDOPS_VEC_HD void add_row_sums(const T* x, const T* y, int64_t n, acc ms, acc mt, acc c0, acc inv_tau,
                               const acc* mask, RowSums<acc>& sums) {
  acc sum_s = 0, sum_t = 0, a = 0, m1 = 0, m2 = 0, zmax = 0;
#pragma omp simd reduction(+ : sum_s, sum_t, a, m1, m2) reduction(max : zmax)
  for (int64_t j = 0; j < n; ++j) {
    const acc m = kMasked ? mask[j] : acc(1);
    const acc ds = static_cast<acc>(x[j]) - ms, dt = static_cast<acc>(y[j]) - mt;
    const acc et = math::exp_<acc>(dt * inv_tau), z = (ds - dt) - c0;
    sum_s += weighted(m, math::exp_<acc>(ds * inv_tau));
    sum_t += weighted(m, et);
    a += weighted(m, et * (dt - ds));
    m1 += weighted(m, et * z);
    m2 += weighted(m, et * z * z * expm1_gap_ratio<acc>(z * inv_tau));
    zmax = std::max(zmax, weighted(m, std::abs(z)));
  }
  sums.s += sum_s;
  sums.t += sum_t;
  sums.a += a;
  sums.m1 += m1;
  sums.m2 += m2;
  sums.zmax = std::max(sums.zmax, zmax);
}

// T^2 KL of one row of n bins; its statistics go to `st`.
template <typename scalar_t, typename acc>
KDOPS_VEC_HD acc tempered_kl_row(const scalar_t* x, const scalar_t* y, int64_t n, acc tau, acc inv_tau, acc* st) {
  acc ms, mt;
  cpu::row_maxima(x, y, n, ms, mt);
  const acc c0 = (static_cast<acc>(x[0]) - ms) - (static_cast<acc>(y[0]) - mt);
  RowSums<acc> sums;
  const int64_t main = n >= cpu::kTailLanes ? cpu::whole_blocks(n) : n;
  add_row_sums<false>(x, y, main, ms, mt, c0, inv_tau, static_cast<const acc*>(nullptr), sums);
  if (main < n) {
    const int64_t last = n - cpu::kTailLanes;
    add_row_sums<true>(x + last, y + last, cpu::kTailLanes, ms, mt, c0, inv_tau, cpu::tail_mask<acc>(n), sums);
  }
  st[kMaxS] = ms;
  st[kLogSumS] = std::log(sums.s);
  st[kMaxT] = mt;
  st[kLogSumT] = std::log(sums.t);
  return row_loss<acc>(tau, inv_tau, sums.s, sums.t, sums.a, sums.m1, sums.m2, sums.zmax, st + kNear, st + kShift);
}

// (sum of w_i l_i, sum of w_i) over rows [begin, end); each row's statistics go to `st_all` (zeros for a row of
// weight 0, which is not read).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES std::array<acc, 2> forward_rows(const scalar_t* sp, const scalar_t* tp, const acc* wp, int64_t begin,
                                                 int64_t end, int64_t n, acc tau, acc inv_tau, acc inv_n,
                                                 acc* st_all) {
  acc total = 0, weight_sum = 0;
  for (int64_t row = begin; row < end; ++row) {
    const acc w = ld::row_weight(wp, row);
    acc* st = st_all + row * kStats;
    weight_sum += w;
    if (w == acc(0)) {
      std::fill(st, st + kStats, acc(0));
      continue;
    }
    total += w * (tempered_kl_row(sp + row * n, tp + row * n, n, tau, inv_tau, st) * inv_n);
  }
  return {total, weight_sum};
}

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, const at::Tensor& w, double temperature, int normalize,
                  at::Tensor& out, at::Tensor& norm, at::Tensor& stats) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), n = s.size(1);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
  acc* st_all = stats.data_ptr<acc>();
  const acc tau = static_cast<acc>(temperature), inv_tau = static_cast<acc>(1.0 / temperature);
  const acc inv_n = static_cast<acc>(1.0 / static_cast<double>(n));
  const auto sums = cpu::chunked_sum<acc, 2>(rows, cpu::items_per_chunk(n), [&](int64_t begin, int64_t end) {
    return forward_rows<scalar_t>(sp, tp, wp, begin, end, n, tau, inv_tau, inv_n, st_all);
  });
  const double z = ld::normaliser<double>(normalize, static_cast<double>(rows), sums[1]);
  out.fill_(ld::normalised<double>(sums[0], z));
  norm.fill_(z);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ld_loss_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                           const c10::optional<at::Tensor>& weight,
                                                           double temperature, c10::string_view normalize) {
  check_ld_loss_args(student, teacher, weight, temperature);
  const int code = ld_normalize_code(normalize);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  at::Tensor stats = at::empty({student.size(0), kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_ld_loss_cpu",
                                  [&] { forward_impl<scalar_t>(s, t, w, temperature, code, out, norm, stats); });
  return {out, norm, stats};
}

// Gradient items [0, n) of a far row: coef_tau * (P_s - P_t). A function, not a lambda: a lambda's call operator
// is compiled for the baseline ISA, not for the caller's clone.
template <typename scalar_t, typename acc>
KDOPS_VEC_HD void far_items(const scalar_t* x, const scalar_t* y, int64_t n, acc max_s, acc log_sum_s, acc max_t,
                            acc log_sum_t, acc coef_tau, acc inv_tau, scalar_t* g) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j)
    g[j] = static_cast<scalar_t>(coef_tau * grad_element<acc>(static_cast<acc>(x[j]), static_cast<acc>(y[j]), max_s,
                                                                log_sum_s, max_t, log_sum_t, inv_tau));
}

// Gradient items [0, n) of a near row: coef * tau (P_s - P_t) in its exact form; c0 is the row's first z term.
template <typename scalar_t, typename acc>
KDOPS_VEC_HD void near_items(const scalar_t* x, const scalar_t* y, int64_t n, acc max_s, acc max_t, acc log_sum_t,
                             acc shift, acc c0, acc coef, acc inv_tau, scalar_t* g) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const acc s = static_cast<acc>(x[j]), t = static_cast<acc>(y[j]);
    const acc z = ((s - max_s) - (t - max_t)) - c0;
    g[j] = static_cast<scalar_t>(coef * near_grad_element<acc>(z, t, max_t, log_sum_t, shift, inv_tau));
  }
}

// One row's gradient with coef = grad / Z * w / n; the last partial block again (the overlap gets the same values).
template <typename scalar_t, typename acc>
KDOPS_VEC_HD void gradient_row(const scalar_t* x, const scalar_t* y, const acc* st, int64_t n, acc coef, acc tau,
                               acc inv_tau, scalar_t* g) {
  const acc max_s = st[kMaxS], log_sum_s = st[kLogSumS], max_t = st[kMaxT], log_sum_t = st[kLogSumT];
  const int64_t main = n >= cpu::kTailLanes ? cpu::whole_blocks(n) : n;
  const int64_t last = n - cpu::kTailLanes;
  if (st[kNear] != acc(0)) {
    const acc shift = st[kShift], c0 = (static_cast<acc>(x[0]) - max_s) - (static_cast<acc>(y[0]) - max_t);
    near_items(x, y, main, max_s, max_t, log_sum_t, shift, c0, coef, inv_tau, g);
    if (main < n) near_items(x + last, y + last, cpu::kTailLanes, max_s, max_t, log_sum_t, shift, c0, coef, inv_tau,
                             g + last);
    return;
  }
  const acc coef_tau = coef * tau;
  far_items(x, y, main, max_s, log_sum_s, max_t, log_sum_t, coef_tau, inv_tau, g);
  if (main < n) far_items(x + last, y + last, cpu::kTailLanes, max_s, log_sum_s, max_t, log_sum_t, coef_tau, inv_tau,
                          g + last);
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void backward_rows(const scalar_t* sp, const scalar_t* tp, const acc* wp, const acc* st_all,
                                    int64_t begin, int64_t end, int64_t n, acc coef_n, acc tau, acc inv_tau,
                                    scalar_t* gp) {
  for (int64_t row = begin; row < end; ++row) {
    const acc w = ld::row_weight(wp, row);
    scalar_t* g = gp + row * n;
    if (w == acc(0)) {  // not read: its gradient is exactly 0 (docs/math.md §0)
      std::fill(g, g + n, scalar_t(0));
      continue;
    }
    gradient_row(sp + row * n, tp + row * n, st_all + row * kStats, n, coef_n * w, tau, inv_tau, g);
  }
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& s, const at::Tensor& t, const at::Tensor& w,
                   const at::Tensor& stats, double temperature, at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), n = s.size(1);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
  const acc* st_all = stats.const_data_ptr<acc>();
  scalar_t* gp = grad.data_ptr<scalar_t>();
  const acc coef_n = static_cast<acc>(coef_d / static_cast<double>(n));
  const acc tau = static_cast<acc>(temperature), inv_tau = static_cast<acc>(1.0 / temperature);
  cpu::parallel_chunks(rows, cpu::items_per_chunk(n), [&](int64_t begin, int64_t end) {
    backward_rows<scalar_t>(sp, tp, wp, st_all, begin, end, n, coef_n, tau, inv_tau, gp);
  });
}

at::Tensor ld_loss_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student, const at::Tensor& teacher,
                                const c10::optional<at::Tensor>& weight, const at::Tensor& norm,
                                const at::Tensor& row_stats, double temperature) {
  check_ld_loss_args(student, teacher, weight, temperature);
  check_ld_loss_backward_args(grad_out, student, norm, row_stats);
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  // CPU tensors: reading the two scalars is a plain memory load, not a device sync.
  const double coef = ld::normalised<double>(grad_out.item<double>(), norm.item<double>());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), st = row_stats.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_ld_loss_backward_cpu",
                                  [&] { backward_impl<scalar_t>(coef, s, t, w, st, temperature, grad); });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("ld_loss", &ld_loss_cpu);
  m.impl("ld_loss_backward", &ld_loss_backward_cpu);
}

}  // namespace kdops
