// CPU kernels of quality-focal KD (docs/math.md §12), math in include/kdops/math/quality_focal_kd.h. Forward:
// one pass in fixed chunks (of elements without weights, of rows with them), chunk sums added in order:
// deterministic. Backward: one elementwise pass.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "gradient_buffer.h"
#include "chunked_sum.h"
#include "isa.h"
#include "parallel.h"
#include "row_tail.h"
#include "store.h"
#include "kdops/math/quality_focal_kd.h"
#include "kdops/math/weighted.h"
#include "../ops/quality_focal_kd.h"

namespace kdops {
namespace {

using namespace qfkd;
constexpr int64_t kChunk = 16384;

// Sum of f over n consecutive elements (the loop every caller vectorises); with kMasked an element of mask 0 adds
// exactly 0 (a select: f may be infinite, and 0 * inf is NaN).
template <Beta kB, bool kMasked, typename scalar_t, typename acc>
inline __attribute__((always_inline)) acc sum_terms(const scalar_t* sp, const scalar_t* tp, int64_t n, acc beta,
                                                    const acc* mask) {
  acc total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    const acc f = loss<kB, acc>(static_cast<acc>(sp[i]), static_cast<acc>(tp[i]), beta);
    total += kMasked ? weighted(mask[i], f) : f;
  }
  return total;
}

// Sum of f over one row of C classes: whole vector blocks, then the last block again with the items already
// counted masked out (row_tail.h: a scalar epilogue would cost as much as the row at 91 classes).
template <Beta kB, typename scalar_t, typename acc>
inline __attribute__((always_inline)) acc row_sum(const scalar_t* sp, const scalar_t* tp, int64_t C, acc beta) {
  const int64_t main = C >= cpu::kTailLanes ? cpu::whole_blocks(C) : C;
  acc total = sum_terms<kB, false, scalar_t, acc>(sp, tp, main, beta, nullptr);
  if (main < C) {
    const int64_t last = C - cpu::kTailLanes;
    total += sum_terms<kB, true, scalar_t, acc>(sp + last, tp + last, cpu::kTailLanes, beta, cpu::tail_mask<acc>(C));
  }
  return total;
}

// Without weights: (sum, unused) over elements [begin, end). Plain functions with value parameters: loops
// over a lambda's captures stay scalar.
template <Beta kB, typename scalar_t, typename acc>
KDOPS_CPU_CLONES std::array<acc, 2> chunk_elements(const scalar_t* sp, const scalar_t* tp, int64_t begin, int64_t end,
                                                   acc beta) {
  return {sum_terms<kB, false, scalar_t, acc>(sp + begin, tp + begin, end - begin, beta, nullptr), acc(0)};
}

// With weights: (weighted sum, sum of the weights) over rows [begin, end); a row of weight 0 adds exactly 0.
template <Beta kB, typename scalar_t, typename acc>
KDOPS_CPU_CLONES std::array<acc, 2> chunk_rows(const scalar_t* sp, const scalar_t* tp, const acc* weight, int64_t C,
                                               int64_t begin, int64_t end, acc beta) {
  acc total = 0, weights = 0;
  for (int64_t row = begin; row < end; ++row) {
    const acc w = weight[row];
    weights += w;
    if (w != acc(0)) total += w * row_sum<kB, scalar_t, acc>(sp + row * C, tp + row * C, C, beta);
  }
  return {total, weights};
}

double norm_of(Normalize normalize, int64_t rows, bool weighted, double weights) {
  if (normalize == Normalize::kSum) return 1.0;
  return normalize == Normalize::kWeight && weighted ? weights : static_cast<double>(rows);
}

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, const acc_t<scalar_t>* weight, double beta_d,
                  Normalize normalize, at::Tensor& out, at::Tensor& norm) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), C = s.size(1);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  const acc beta = static_cast<acc>(beta_d);
  std::array<double, 2> sums{};
  with_beta(beta_d, [&](auto kind) {
    constexpr Beta kB = decltype(kind)::value;
    if (weight == nullptr) {
      sums = cpu::chunked_sum<acc, 2>(s.numel(), kChunk, [&](int64_t begin, int64_t end) {
        return chunk_elements<kB, scalar_t, acc>(sp, tp, begin, end, beta);
      });
    } else {
      sums = cpu::chunked_sum<acc, 2>(rows, cpu::items_per_chunk(C, kChunk), [&](int64_t begin, int64_t end) {
        return chunk_rows<kB, scalar_t, acc>(sp, tp, weight, C, begin, end, beta);
      });
    }
  });
  const double z = norm_of(normalize, rows, weight != nullptr, sums[1]);
  out.fill_(z == 0.0 ? 0.0 : sums[0] / z);
  norm.fill_(z);
}

std::tuple<at::Tensor, at::Tensor> quality_focal_kd_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                        const c10::optional<at::Tensor>& weight, double beta,
                                                        c10::string_view normalize) {
  check_quality_focal_kd_args(student, teacher, weight, beta);
  const Normalize z = parse_quality_focal_kd_normalize(normalize);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_quality_focal_kd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    forward_impl<scalar_t>(s, t, weight.has_value() ? w.const_data_ptr<acc>() : nullptr, beta, z, out, norm);
  });
  return {out, norm};
}

// scale * df/dz_s over n consecutive elements.
template <Beta kB, typename scalar_t, typename acc>
inline __attribute__((always_inline)) void write_grads(const scalar_t* sp, const scalar_t* tp, int64_t n, acc scale,
                                                       acc beta, scalar_t* gp) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    gp[i] = cpu::to_storage<scalar_t>(scale * grad<kB, acc>(static_cast<acc>(sp[i]), static_cast<acc>(tp[i]), beta));
}

// dL/dz_s over elements [begin, end), without weights.
template <Beta kB, typename scalar_t, typename acc>
KDOPS_CPU_CLONES void chunk_grad_elements(const scalar_t* sp, const scalar_t* tp, int64_t begin, int64_t end, acc coef,
                                          acc beta, scalar_t* gp) {
  write_grads<kB, scalar_t, acc>(sp + begin, tp + begin, end - begin, coef, beta, gp + begin);
}

// dL/dz_s over rows [begin, end), with weights: (w * coef) * df, exactly 0 in a row of weight 0. A row's
// last vector block is written twice (row_tail.h), with the same values.
template <Beta kB, typename scalar_t, typename acc>
KDOPS_CPU_CLONES void chunk_grad_rows(const scalar_t* sp, const scalar_t* tp, const acc* weight, int64_t C,
                                      int64_t begin, int64_t end, acc coef, acc beta, scalar_t* gp) {
  const int64_t main = C >= cpu::kTailLanes ? cpu::whole_blocks(C) : C;
  for (int64_t row = begin; row < end; ++row) {
    const acc w = weight[row];
    const int64_t first = row * C;
    if (w == acc(0)) {
      std::fill(gp + first, gp + first + C, static_cast<scalar_t>(0));
      continue;
    }
    write_grads<kB, scalar_t, acc>(sp + first, tp + first, main, w * coef, beta, gp + first);
    if (main < C) {
      const int64_t last = first + C - cpu::kTailLanes;
      write_grads<kB, scalar_t, acc>(sp + last, tp + last, cpu::kTailLanes, w * coef, beta, gp + last);
    }
  }
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& s, const at::Tensor& t, const acc_t<scalar_t>* weight,
                   double beta_d, at::Tensor& grad_in) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = s.size(0), C = s.size(1);
  const acc coef = static_cast<acc>(coef_d), beta = static_cast<acc>(beta_d);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  scalar_t* gp = grad_in.data_ptr<scalar_t>();
  with_beta(beta_d, [&](auto kind) {
    constexpr Beta kB = decltype(kind)::value;
    if (weight == nullptr) {
      cpu::parallel_chunks(s.numel(), kChunk, [&](int64_t begin, int64_t end) {
        chunk_grad_elements<kB, scalar_t, acc>(sp, tp, begin, end, coef, beta, gp);
      });
    } else {
      cpu::parallel_chunks(rows, cpu::items_per_chunk(C, kChunk), [&](int64_t begin, int64_t end) {
        chunk_grad_rows<kB, scalar_t, acc>(sp, tp, weight, C, begin, end, coef, beta, gp);
      });
    }
  });
}

at::Tensor quality_focal_kd_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student,
                                         const at::Tensor& teacher, const c10::optional<at::Tensor>& weight,
                                         const at::Tensor& norm, double beta) {
  check_quality_focal_kd_args(student, teacher, weight, beta);
  check_backward_scalar(grad_out, student, "kdops.quality_focal_kd_backward", "grad");
  check_backward_scalar(norm, student, "kdops.quality_focal_kd_backward", "norm");
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  // CPU tensors: reading the two scalars is a plain memory load, not a device sync.
  const double z = norm.item<double>();
  const double coef = z == 0.0 ? 0.0 : grad_out.item<double>() / z;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_quality_focal_kd_backward_cpu",
                                  [&] {
                                    using acc = acc_t<scalar_t>;
                                    backward_impl<scalar_t>(coef, s, t,
                                                            weight.has_value() ? w.const_data_ptr<acc>() : nullptr,
                                                            beta, grad);
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("quality_focal_kd", &quality_focal_kd_cpu);
  m.impl("quality_focal_kd_backward", &quality_focal_kd_backward_cpu);
}

}  // namespace kdops
