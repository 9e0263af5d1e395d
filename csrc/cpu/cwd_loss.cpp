// CPU kernels of channel-wise distillation (docs/math.md §6). Forward: per (n, c) row, one pass for the maxima
// and one for the exp-sums (in blocks, blocked_sum.h); rows go in fixed chunks whose sums are added in order
// (deterministic).
// Backward: one elementwise pass from the saved row statistics.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "blocked_sum.h"
#include "gradient_buffer.h"
#include "chunked_sum.h"
#include "isa.h"
#include "parallel.h"
#include "row_math.h"
#include "kdops/math/cwd_loss.h"
#include "../ops/cwd_loss.h"

namespace kdops {
namespace {

using namespace cwd;

// tau^2 KL summed over rows [begin, end) (in double), each row's statistics written to `stats`.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES double forward_rows(const scalar_t* sp, const scalar_t* tp, int64_t begin, int64_t end, int64_t HW,
                                     acc tau, acc inv_tau, acc* st_all) {
  double total = 0;
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* x = sp + row * HW;
    const scalar_t* y = tp + row * HW;
    acc ms, mt;
    cpu::row_maxima(x, y, HW, ms, mt);
    const acc c0 = (static_cast<acc>(x[0]) - ms) - (static_cast<acc>(y[0]) - mt);
    acc zmax = 0;
    const auto sums = cpu::blocked_sum(HW, [&](int64_t j0, int64_t j1) {
      acc sum_s = 0, sum_t = 0, a = 0, m1 = 0, m2 = 0, zm = 0;
#pragma omp simd reduction(+ : sum_s, sum_t, a, m1, m2) reduction(max : zm)
      for (int64_t j = j0; j < j1; ++j) {
        const acc ds = static_cast<acc>(x[j]) - ms, dt = static_cast<acc>(y[j]) - mt;
        const acc et = math::exp_<acc>(dt * inv_tau), z = (ds - dt) - c0;
        sum_s += math::exp_<acc>(ds * inv_tau);
        sum_t += et;
        a += et * (dt - ds);
        m1 += et * z;
        m2 += et * z * z * expm1_gap_ratio<acc>(z * inv_tau);
        zm = std::max(zm, std::abs(z));
      }
      zmax = std::max(zmax, zm);
      return std::array<acc, 5>{sum_s, sum_t, a, m1, m2};
    });
    const acc sum_s = static_cast<acc>(sums[0]), sum_t = static_cast<acc>(sums[1]);
    acc* st = st_all + row * kStats;
    st[kMaxS] = ms;
    st[kLogSumS] = std::log(sum_s);
    st[kMaxT] = mt;
    st[kLogSumT] = std::log(sum_t);
    total += row_loss<acc>(tau, inv_tau, sum_s, sum_t, static_cast<acc>(sums[2]), static_cast<acc>(sums[3]),
                           static_cast<acc>(sums[4]), zmax, st + kNear, st + kShift);
  }
  return total;
}

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, double tau, at::Tensor& out, at::Tensor& stats) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0) * s.size(1), HW = s.size(2) * s.size(3);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  acc* st_all = stats.data_ptr<acc>();
  const acc tau_acc = static_cast<acc>(tau), inv_tau = static_cast<acc>(1.0 / tau);
  auto sums = cpu::chunked_sum<double, 1>(rows, cpu::items_per_chunk(HW), [&](int64_t begin, int64_t end) {
    return std::array<double, 1>{forward_rows<scalar_t>(sp, tp, begin, end, HW, tau_acc, inv_tau, st_all)};
  });
  out.fill_(sums[0] / static_cast<double>(std::max<int64_t>(rows, 1)));
}

std::tuple<at::Tensor, at::Tensor> cwd_loss_cpu(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  check_cwd_loss_args(student, teacher, tau);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), stats = at::empty({student.size(0) * student.size(1), kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_cwd_loss_cpu",
                                  [&] { forward_impl<scalar_t>(s, t, tau, out, stats); });
  return {out, stats};
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
KDOPS_CPU_CLONES void backward_rows(const scalar_t* sp, const scalar_t* tp, const acc* st_all, int64_t begin,
                                    int64_t end, int64_t HW, acc coef, acc tau, acc inv_tau, scalar_t* gp) {
  for (int64_t row = begin; row < end; ++row) {
    const acc* st = st_all + row * kStats;
    const acc max_s = st[kMaxS], log_sum_s = st[kLogSumS], max_t = st[kMaxT], log_sum_t = st[kLogSumT];
    const scalar_t* x = sp + row * HW;
    const scalar_t* y = tp + row * HW;
    scalar_t* g = gp + row * HW;
    if (st[kNear] != acc(0)) {
      const acc shift = st[kShift], c0 = (static_cast<acc>(x[0]) - max_s) - (static_cast<acc>(y[0]) - max_t);
#pragma omp simd
      for (int64_t j = 0; j < HW; ++j) {
        const acc s = static_cast<acc>(x[j]), t = static_cast<acc>(y[j]);
        const acc z = ((s - max_s) - (t - max_t)) - c0;
        g[j] = static_cast<scalar_t>(coef * near_grad_element<acc>(z, t, max_t, log_sum_t, shift, inv_tau));
      }
      continue;
    }
    const acc coef_tau = coef * tau;
#pragma omp simd
    for (int64_t j = 0; j < HW; ++j)
      g[j] = static_cast<scalar_t>(coef_tau * grad_element<acc>(static_cast<acc>(x[j]), static_cast<acc>(y[j]), max_s,
                                                                  log_sum_s, max_t, log_sum_t, inv_tau));
  }
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& s, const at::Tensor& t, const at::Tensor& stats, double tau,
                   at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0) * s.size(1), HW = s.size(2) * s.size(3);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const acc* st_all = stats.const_data_ptr<acc>();
  scalar_t* gp = grad.data_ptr<scalar_t>();
  const acc coef = static_cast<acc>(coef_d), tau_acc = static_cast<acc>(tau), inv_tau = static_cast<acc>(1.0 / tau);
  cpu::parallel_chunks(rows, cpu::items_per_chunk(HW), [&](int64_t begin, int64_t end) {
    backward_rows<scalar_t>(sp, tp, st_all, begin, end, HW, coef, tau_acc, inv_tau, gp);
  });
}

at::Tensor cwd_loss_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student, const at::Tensor& teacher,
                                 const at::Tensor& row_stats, double tau) {
  check_cwd_loss_args(student, teacher, tau);
  check_cwd_loss_backward_args(grad_out, student, row_stats);
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  // CPU tensor: reading the scalar is a plain memory load, not a device sync.
  const double coef = grad_out.item<double>() / static_cast<double>(student.size(0) * student.size(1));  // times tau (P_s - P_t)
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), st = row_stats.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_cwd_loss_backward_cpu",
                                  [&] { backward_impl<scalar_t>(coef, s, t, st, tau, grad); });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("cwd_loss", &cwd_loss_cpu);
  m.impl("cwd_loss_backward", &cwd_loss_backward_cpu);
}

}  // namespace kdops
