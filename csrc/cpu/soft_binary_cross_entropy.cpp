// CPU kernels of the binary weighted soft cross-entropy (docs/math.md §7): one pass forward (fixed chunks of
// anchors, chunk sums added in order: deterministic), one elementwise pass backward.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "gradient_buffer.h"
#include "chunked_sum.h"
#include "isa.h"
#include "parallel.h"
#include "kdops/math/soft_binary_cross_entropy.h"
#include "../ops/soft_binary_cross_entropy.h"

namespace kdops {
namespace {

using namespace soft_bce;
constexpr int64_t kChunk = 16384;

// Labels that are neither 0, 1 nor ignore_index (a branch-free count: 250k anchors per image).
KDOPS_CPU_CLONES int64_t count_bad_labels(const int64_t* y, int64_t n, int64_t ignore_index) {
  int64_t bad = 0;
#pragma omp simd reduction(+ : bad)
  for (int64_t i = 0; i < n; ++i) bad += (y[i] == ignore_index || label_ok(y[i])) ? 0 : 1;
  return bad;
}

// CPU tensors: validating labels up front is cheap and gives a clear error (GPU kernels give NaN).
void check_labels(const at::Tensor& target, int64_t ignore_index) {
  TORCH_CHECK(ignore_index >= INT32_MIN && ignore_index <= INT32_MAX,
              "kdops.soft_binary_cross_entropy: ignore_index must fit in int32, got ", ignore_index);
  const int64_t* y = target.const_data_ptr<int64_t>();
  const int64_t n = target.numel();
  if (count_bad_labels(y, n, ignore_index) == 0) return;  // a vector pass; the search below only on error
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(y[i] == ignore_index || label_ok(y[i]), "kdops.soft_binary_cross_entropy: target element ", i, " = ",
                y[i], " is neither 0, 1 nor ignore_index (", ignore_index, ")");
}

// Loss sum and kept count over anchors [begin, end). A plain function with its coefficients as value
// parameters: read through a lambda's captures, GCC keeps this loop scalar.
template <typename scalar_t, typename acc>
KDOPS_CPU_CLONES std::array<acc, 2> chunk_loss(const scalar_t* sp, const scalar_t* tp, const int64_t* target, int64_t begin,
                              int64_t end, int64_t ignore_index, acc wp, acc wn, acc inv_t, acc mu, bool unit_t) {
  acc total = 0, count = 0;
  // Labels are 0, 1 or ignore_index (checked up front, with ignore_index within int32), so 32-bit
  // labels compare the same; SSE2 has no 64-bit integer compare or int64 -> float conversion.
  const int32_t ignore32 = static_cast<int32_t>(ignore_index);
  if (target == nullptr) {
#pragma omp simd reduction(+ : total)
    for (int64_t i = begin; i < end; ++i)
      total += loss<acc>(static_cast<acc>(sp[i]), static_cast<acc>(tp[i]), -1, wp, wn, inv_t, mu, unit_t);
    count = static_cast<acc>(end - begin);
  } else {
#pragma omp simd reduction(+ : total, count)
    for (int64_t i = begin; i < end; ++i) {
      // branch-free (labels are validated up front): the loss at label y in {0, 1}, masked by `kept`
      const int32_t label = static_cast<int32_t>(target[i]);
      const bool kept = label != ignore32;
      const acc l = loss<acc>(static_cast<acc>(sp[i]), static_cast<acc>(tp[i]), kept ? label : 0, wp, wn, inv_t, mu,
                              unit_t);
      total += kept ? l : acc(0);
      count += kept ? acc(1) : acc(0);
    }
  }
  return {total, count};
}

template <typename scalar_t>
void forward_impl(const at::Tensor& s, const at::Tensor& t, const int64_t* target, const Params& params,
                  int64_t ignore_index, at::Tensor& out, at::Tensor& norm) {
  using acc = acc_t<scalar_t>;
  const Coeffs<acc> k(params);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  auto sums = cpu::chunked_sum<acc, 2>(s.numel(), kChunk, [&](int64_t begin, int64_t end) {
    return chunk_loss<scalar_t, acc>(sp, tp, target, begin, end, ignore_index, k.wp, k.wn, k.inv_t, k.mu,
                                     k.unit_temperature);
  });
  out.fill_(sums[1] == acc(0) ? acc(0) : sums[0] / sums[1]);
  norm.fill_(sums[1]);
}

std::tuple<at::Tensor, at::Tensor> soft_binary_cross_entropy_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                                 const c10::optional<at::Tensor>& target,
                                                                 double pos_weight, double neg_weight,
                                                                 double temperature, double mu, int64_t ignore_index) {
  check_soft_binary_cross_entropy_args(student, teacher, target, temperature);
  const auto opts = student.options().dtype(acc_dtype(student.scalar_type()));
  at::Tensor out = at::empty({}, opts), norm = at::empty({}, opts);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  if (target.has_value()) check_labels(y, ignore_index);
  const Params params{pos_weight, neg_weight, temperature, mu};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "kdops_soft_binary_cross_entropy_cpu", [&] {
    forward_impl<scalar_t>(s, t, target.has_value() ? y.const_data_ptr<int64_t>() : nullptr, params, ignore_index, out,
                           norm);
  });
  return {out, norm};
}

// dL/dz_s for anchors [begin, end) (see chunk_loss for why this is a plain function).
template <typename scalar_t, typename acc>
KDOPS_CPU_CLONES void chunk_grad(const scalar_t* sp, const scalar_t* tp, const int64_t* target, int64_t begin, int64_t end,
                int64_t ignore_index, acc coef, acc wp, acc wn, acc inv_t, acc mu, bool unit_t, scalar_t* gp) {
  const int32_t ignore32 = static_cast<int32_t>(ignore_index);  // see chunk_loss
  if (target == nullptr) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i)
      gp[i] = static_cast<scalar_t>(coef * grad<acc>(static_cast<acc>(sp[i]), static_cast<acc>(tp[i]), -1, wp, wn,
                                                     inv_t, mu, unit_t));
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {  // branch-free, labels validated up front
      const int32_t label = static_cast<int32_t>(target[i]);
      const bool kept = label != ignore32;
      const acc g = grad<acc>(static_cast<acc>(sp[i]), static_cast<acc>(tp[i]), kept ? label : 0, wp, wn, inv_t, mu,
                              unit_t);
      gp[i] = static_cast<scalar_t>(kept ? coef * g : acc(0));
    }
  }
}

template <typename scalar_t>
void backward_impl(double coef_d, const at::Tensor& s, const at::Tensor& t, const int64_t* target,
                   const Params& params, int64_t ignore_index, at::Tensor& grad_in) {
  using acc = acc_t<scalar_t>;
  const Coeffs<acc> k(params);
  const acc coef = static_cast<acc>(coef_d);
  const scalar_t* sp = s.const_data_ptr<scalar_t>();
  const scalar_t* tp = t.const_data_ptr<scalar_t>();
  scalar_t* gp = grad_in.data_ptr<scalar_t>();
  cpu::parallel_chunks(s.numel(), kChunk, [&](int64_t begin, int64_t end) {
    chunk_grad<scalar_t, acc>(sp, tp, target, begin, end, ignore_index, coef, k.wp, k.wn, k.inv_t, k.mu,
                              k.unit_temperature, gp);
  });
}

at::Tensor soft_binary_cross_entropy_backward_cpu(const at::Tensor& grad_out, const at::Tensor& student,
                                                  const at::Tensor& teacher, const c10::optional<at::Tensor>& target,
                                                  const at::Tensor& norm, double pos_weight, double neg_weight,
                                                  double temperature, double mu, int64_t ignore_index) {
  check_soft_binary_cross_entropy_args(student, teacher, target, temperature);
  check_backward_scalar(grad_out, student, "kdops.soft_binary_cross_entropy_backward", "grad");
  check_backward_scalar(norm, student, "kdops.soft_binary_cross_entropy_backward", "norm");
  at::Tensor grad = cpu::empty_gradient_like(student);
  if (student.numel() == 0) return grad;
  // CPU tensors: reading the two scalars is a plain memory load, not a device sync.
  const double n = norm.item<double>();
  const double coef = n == 0.0 ? 0.0 : grad_out.item<double>() / n;
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const at::Tensor y = target.has_value() ? target->contiguous() : at::Tensor();
  if (target.has_value()) check_labels(y, ignore_index);
  const Params params{pos_weight, neg_weight, temperature, mu};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(),
                                  "kdops_soft_binary_cross_entropy_backward_cpu", [&] {
                                    backward_impl<scalar_t>(coef, s, t,
                                                            target.has_value() ? y.const_data_ptr<int64_t>() : nullptr,
                                                            params, ignore_index, grad);
                                  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(kdops, CPU, m) {
  m.impl("soft_binary_cross_entropy", &soft_binary_cross_entropy_cpu);
  m.impl("soft_binary_cross_entropy_backward", &soft_binary_cross_entropy_backward_cpu);
}

}  // namespace kdops
