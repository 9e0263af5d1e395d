// CPU kernels of PKD (docs/math.md §6). Work is split by channel (each channel's N segments of H*W values are
// read three times: means, centred squares, squared difference); the per-channel D_c are added in
// channel order, so the result does not depend on the thread count. Backward: one elementwise pass.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "gradient_buffer.h"
#include "kdops/math/pkd_loss.h"
#include "../ops/pkd_loss.h"

namespace kdops {
namespace {

using namespace pkd;

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, at::Tensor& out, at::Tensor& stats) {
  using acc = acc_t<scalar_t>;
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3), M = N * HW;
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  acc* st_all = stats.data_ptr<acc>();
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      acc sum_x = 0, sum_y = 0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* x = sp + (n * C + c) * HW;
        const scalar_t* y = tp + (n * C + c) * HW;
#pragma omp simd reduction(+ : sum_x, sum_y)
        for (int64_t j = 0; j < HW; ++j) {
          sum_x += static_cast<acc>(x[j]);
          sum_y += static_cast<acc>(y[j]);
        }
      }
      const acc mx = sum_x / static_cast<acc>(M), my = sum_y / static_cast<acc>(M);
      acc vx = 0, vy = 0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* x = sp + (n * C + c) * HW;
        const scalar_t* y = tp + (n * C + c) * HW;
#pragma omp simd reduction(+ : vx, vy)
        for (int64_t j = 0; j < HW; ++j) {
          const acc dx = static_cast<acc>(x[j]) - mx, dy = static_cast<acc>(y[j]) - my;
          vx += dx * dx;
          vy += dy * dy;
        }
      }
      const acc sx = unbiased_std<acc>(vx, M), sy = unbiased_std<acc>(vy, M);
      const acc inv_ax = acc(1) / (sx + acc(kEps)), inv_ay = acc(1) / (sy + acc(kEps));
      acc d = 0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* x = sp + (n * C + c) * HW;
        const scalar_t* y = tp + (n * C + c) * HW;
#pragma omp simd reduction(+ : d)
        for (int64_t j = 0; j < HW; ++j) {
          const acc diff = (static_cast<acc>(x[j]) - mx) * inv_ax - (static_cast<acc>(y[j]) - my) * inv_ay;
          d += diff * diff;
        }
      }
      acc* st = st_all + c * kStats;
      st[kMeanS] = mx;
      st[kStdS] = sx;
      st[kMeanT] = my;
      st[kStdT] = sy;
      st[kSquaredDiff] = d;
    }
  });
  acc total = 0;
  for (int64_t c = 0; c < C; ++c) total += st_all[c * kStats + kSquaredDiff];
  out.fill_(total / (acc(2) * static_cast<acc>(C) * static_cast<acc>(M)));
}

std::tuple<at::Tensor, at::Tensor> pkd_loss_cpu(const at::Tensor& student, const at::Tensor& teacher) {
  check_pkd_loss_args(student, teacher);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), stats = at::empty({student.size(1), kStats}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_pkd_loss_cpu",
                                  [&] { forward_impl<scalar_t>(s, t, out, stats); });
  return {out, stats};
}

template <typename scalar_t>
void backward_impl(double grad_d, const at::Tensor& s, const at::Tensor& t, const at::Tensor& stats,
                   at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3), M = N * HW;
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const acc* st_all = stats.const_data_ptr<acc>();
  scalar_t* gp = grad.data_ptr<scalar_t>();
  const acc coef = static_cast<acc>(grad_d / (static_cast<double>(C) * static_cast<double>(M)));
  at::parallel_for(0, N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const Backward<acc> b = backward_coeffs<acc>(st_all + (row % C) * kStats, M);
      const scalar_t* x = sp + row * HW;
      const scalar_t* y = tp + row * HW;
      scalar_t* g = gp + row * HW;
#pragma omp simd
      for (int64_t j = 0; j < HW; ++j)
        g[j] = static_cast<scalar_t>(coef * grad_element<acc>(static_cast<acc>(x[j]), static_cast<acc>(y[j]), b));
    }
  });
}

at::Tensor pkd_loss_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student, const at::Tensor& teacher,
                                 const at::Tensor& channel_stats) {
  check_pkd_loss_args(student, teacher);
  check_pkd_loss_backward_args(grad_out, student, channel_stats);
  at::Tensor grad = cpu::empty_gradient_like(student);
  // CPU tensor: reading the scalar is a plain memory load, not a device sync.
  const double g = grad_out.item<double>();
  const at::Tensor s = student.contiguous(), t = teacher.contiguous(), st = channel_stats.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_pkd_loss_backward_cpu",
                                  [&] { backward_impl<scalar_t>(g, s, t, st, grad); });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("pkd_loss", &pkd_loss_cpu);
  m.impl("pkd_loss_backward", &pkd_loss_backward_cpu);
}

}  // namespace kdops
