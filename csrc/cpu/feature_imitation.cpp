// CPU kernels of masked feature imitation (docs/math.md §5): one pass over S, T (and M) forward,
// one pass backward writing dS. Work is split by (n, c) rows; each row is summed in blocks
// (blocked_sum.h) and the row sums are added in row order in double (thread-count independent).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "blocked_sum.h"
#include "gradient_buffer.h"
#include "parallel.h"
#include "kdops/math/feature_imitation.h"
#include "../ops/feature_imitation.h"

namespace kdops {
namespace {

using namespace imitation;

inline int64_t row_grain(int64_t hw) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(hw, 1)); }

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, const at::Tensor* mask, int64_t loss,
                  int64_t normalize, at::Tensor& out, at::Tensor& norm) {
  using acc = acc_t<scalar_t>;
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const scalar_t* mp = mask ? mask->const_data_ptr<scalar_t>() : nullptr;
  std::vector<double> partial(N * C);
  cpu::parallel_chunks(N * C, row_grain(HW), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* a = sp + row * HW;
      const scalar_t* b = tp + row * HW;
      const scalar_t* m = mp == nullptr ? nullptr : mp + (row / C) * HW;
      partial[row] = cpu::blocked_sum(HW, [&](int64_t j0, int64_t j1) {
        acc total = 0;
        if (m == nullptr) {
#pragma omp simd reduction(+ : total)
          for (int64_t j = j0; j < j1; ++j) total += rho<acc>(static_cast<acc>(a[j]) - static_cast<acc>(b[j]), loss);
        } else {
#pragma omp simd reduction(+ : total)
          for (int64_t j = j0; j < j1; ++j)
            total += weighted<acc>(static_cast<acc>(m[j]), rho<acc>(static_cast<acc>(a[j]) - static_cast<acc>(b[j]), loss));
        }
        return total;
      });
    }
  });
  double total = 0;
  for (double p : partial) total += p;

  double z;
  if (normalize == kBatch) {
    z = static_cast<double>(N);
  } else if (normalize == kMean) {
    z = static_cast<double>(N * C * HW);
  } else if (mp == nullptr) {
    z = static_cast<double>(C) * static_cast<double>(N * HW);
  } else {
    z = static_cast<double>(C) * cpu::blocked_sum(N * HW, [&](int64_t j0, int64_t j1) {
          acc sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = j0; j < j1; ++j) sum += static_cast<acc>(mp[j]);
          return sum;
        });
  }
  out.fill_(safe_div<double>(total, z));
  norm.fill_(z);
}

std::tuple<at::Tensor, at::Tensor> feature_imitation_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                         const c10::optional<at::Tensor>& mask, int64_t loss,
                                                         int64_t normalize) {
  check_feature_imitation_args(student, teacher, mask, loss, normalize);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_feature_imitation_cpu", [&] {
    forward_impl<scalar_t>(s, t, mask.has_value() ? &m : nullptr, loss, normalize, out, norm);
  });
  return {out, norm};
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& s, const at::Tensor& t, const at::Tensor* mask, int64_t loss,
                   at::Tensor& grad) {
  using acc = acc_t<scalar_t>;
  const int64_t N = s.size(0), C = s.size(1), HW = s.size(2) * s.size(3);
  const acc coef = static_cast<acc>(coef_d);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const scalar_t* mp = mask ? mask->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* gp = grad.data_ptr<scalar_t>();
  cpu::parallel_chunks(N * C, row_grain(HW), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* a = sp + row * HW;
      const scalar_t* b = tp + row * HW;
      scalar_t* g = gp + row * HW;
      if (mp == nullptr) {
#pragma omp simd
        for (int64_t j = 0; j < HW; ++j)
          g[j] = static_cast<scalar_t>(coef * rho_grad<acc>(static_cast<acc>(a[j]) - static_cast<acc>(b[j]), loss));
      } else {
        const scalar_t* m = mp + (row / C) * HW;
#pragma omp simd
        for (int64_t j = 0; j < HW; ++j)
          g[j] = static_cast<scalar_t>(weighted<acc>(
              static_cast<acc>(m[j]), coef * rho_grad<acc>(static_cast<acc>(a[j]) - static_cast<acc>(b[j]), loss)));
      }
    }
  });
}

at::Tensor feature_imitation_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student,
                                          const at::Tensor& teacher, const c10::optional<at::Tensor>& mask,
                                          const at::Tensor& norm, int64_t loss) {
  check_feature_imitation_args(student, teacher, mask, loss, 0);
  check_backward_scalar(grad_out, student, "kdops.feature_imitation_backward", "grad");
  check_backward_scalar(norm, student, "kdops.feature_imitation_backward", "norm");
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  // CPU tensors: reading the two scalars is a plain memory load, not a device sync.
  const double z = norm.item<double>();
  const double coef = z == 0.0 ? 0.0 : grad_out.item<double>() / z;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor m = mask.has_value() ? mask->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_feature_imitation_backward_cpu",
                                  [&] { backward_impl<scalar_t>(coef, s, t, mask.has_value() ? &m : nullptr, loss, grad); });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("feature_imitation", &feature_imitation_cpu);
  m.impl("feature_imitation_backward", &feature_imitation_backward_cpu);
}

}  // namespace kdops
