// CPU kernels of PKD (docs/math.md §6). Work is split by channel (each channel's N segments of H*W values are
// read three times: means with the largest magnitudes, centred squares, squared difference); the per-channel D_c are added in
// channel order, so the result does not depend on the thread count. Every sum runs in blocks
// (blocked_sum.h), so a large N*H*W keeps float32 round-off. Backward: one elementwise pass.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "blocked_sum.h"
#include "gradient_buffer.h"
#include "parallel.h"
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
  std::vector<double> squared_diff(C);
  cpu::parallel_chunks(C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      // Two sums over the channel's N segments of H*W values, each segment summed in blocks.
      const auto channel_sums = [&](const auto& block) {
        std::array<double, 2> total{};
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* x = sp + (n * C + c) * HW;
          const scalar_t* y = tp + (n * C + c) * HW;
          const auto part = cpu::blocked_sum(HW, [&](int64_t j0, int64_t j1) { return block(x, y, j0, j1); });
          total[0] += part[0];
          total[1] += part[1];
        }
        return total;
      };
      // Pass 1: the scaled sums (means) and the largest |x| and |y| (the scale of the centred squares).
      const acc m_scale = mean_scale<acc>(M);
      acc amax_x = 0, amax_y = 0;
      const auto sums = channel_sums([&](const scalar_t* x, const scalar_t* y, int64_t j0, int64_t j1) {
        acc sum_x = 0, sum_y = 0, bx = 0, by = 0;
#pragma omp simd reduction(+ : sum_x, sum_y) reduction(max : bx, by)
        for (int64_t j = j0; j < j1; ++j) {
          const acc xj = static_cast<acc>(x[j]), yj = static_cast<acc>(y[j]);
          sum_x += xj * m_scale;
          sum_y += yj * m_scale;
          bx = std::max(bx, std::abs(xj));
          by = std::max(by, std::abs(yj));
        }
        amax_x = std::max(amax_x, bx);
        amax_y = std::max(amax_y, by);
        return std::array<acc, 2>{sum_x, sum_y};
      });
      const acc scale_x = unit_scale<acc>(amax_x), scale_y = unit_scale<acc>(amax_y);
      const double m_scaled = static_cast<double>(M) * static_cast<double>(m_scale);
      const acc mx = static_cast<acc>(sums[0] / m_scaled), my = static_cast<acc>(sums[1] / m_scaled);
      const acc mx_scaled = mx * scale_x, my_scaled = my * scale_y;
      const auto centred = channel_sums([&](const scalar_t* x, const scalar_t* y, int64_t j0, int64_t j1) {
        acc vx = 0, vy = 0;
#pragma omp simd reduction(+ : vx, vy)
        for (int64_t j = j0; j < j1; ++j) {
          const acc dx = static_cast<acc>(x[j]) * scale_x - mx_scaled, dy = static_cast<acc>(y[j]) * scale_y - my_scaled;
          vx += dx * dx;
          vy += dy * dy;
        }
        return std::array<acc, 2>{vx, vy};
      });
      const acc sx = unbiased_std<acc>(static_cast<acc>(centred[0]), M, scale_x),
                sy = unbiased_std<acc>(static_cast<acc>(centred[1]), M, scale_y);
      const acc inv_ax = acc(1) / (sx + acc(kEps)), inv_ay = acc(1) / (sy + acc(kEps));
      const auto d = channel_sums([&](const scalar_t* x, const scalar_t* y, int64_t j0, int64_t j1) {
        acc sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = j0; j < j1; ++j) {
          const acc diff = (static_cast<acc>(x[j]) - mx) * inv_ax - (static_cast<acc>(y[j]) - my) * inv_ay;
          sum += diff * diff;
        }
        return std::array<acc, 2>{sum, acc(0)};
      });
      acc* st = st_all + c * kStats;
      st[kMeanS] = mx;
      st[kStdS] = sx;
      st[kMeanT] = my;
      st[kStdT] = sy;
      st[kSquaredDiff] = static_cast<acc>(d[0]);
      squared_diff[c] = d[0];
    }
  });
  double total = 0;
  for (double v : squared_diff) total += v;
  out.fill_(total / (2.0 * static_cast<double>(C) * static_cast<double>(M)));
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
  cpu::parallel_chunks(N * C, std::max<int64_t>(1, 16384 / std::max<int64_t>(HW, 1)), [&](int64_t begin, int64_t end) {
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
