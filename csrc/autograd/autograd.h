// Shared by the autograd kernels (csrc/autograd/<op>.cpp): the hand-written backward of every native op
// lives in C++, registered to the Autograd key, so an eager fwd + bwd runs no Python (torch.library's
// Python autograd cost ~70-150 us per call, more than the whole ROI-shape head loss on a GPU). The
// Triton ops keep the same formulas in Python (kdops/ops/<op>.py); the parity tests hold both to them.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <utility>
#include <vector>

namespace kdops {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed dispatcher handle of `kdops::<name>`, looked up once on first use (after all registrations).
template <typename Signature>
const c10::TypedOperatorHandle<Signature>& op_handle(const char* name) {
  static const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
  return handle;
}

// A saved optional tensor comes back undefined when it was absent.
inline c10::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

inline at::Tensor saved_or_undefined(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// The teacher is a constant of every distillation loss: asking for its gradient is a caller's mistake.
// One wording with kdops/_checks.py no_grad_message; `why` (may be empty) says why, e.g. " (...)".
constexpr const char* kFgdTeacherWhy = " (its attention masks are constants of the FGD loss, as in the official code)";
inline void check_no_grad(AutogradContext* ctx, size_t index, const char* op, const char* arg, const char* why = "") {
  TORCH_CHECK(!ctx->needs_input_grad(index), "kdops.", op, ": ", arg, " must not require grad, as ", arg,
              " gets no gradient", why, "; pass ", arg, ".detach()");
}

// The tensors a backward reads, saved by name: `Saved` is the op's enum of them (its Python declaration's
// `saved` order, which tests/native/test_registry.py checks), ending with kCount; the backward reads s[kName].
template <typename Saved>
variable_list in_saved_order(std::initializer_list<std::pair<Saved, at::Tensor>> tensors) {
  variable_list slots(Saved::kCount);
  std::vector<bool> named(Saved::kCount, false);
  for (const auto& [index, tensor] : tensors) {
    TORCH_INTERNAL_ASSERT(!named[index], "saved tensor ", index, " is named twice");
    named[index] = true;
    slots[index] = tensor;
  }
  TORCH_INTERNAL_ASSERT(tensors.size() == Saved::kCount, "every saved tensor must be named");
  return slots;
}

template <size_t... I>
auto as_tuple(const variable_list& outputs, std::index_sequence<I...>) {
  return std::make_tuple(outputs[I]...);
}

// The Autograd-key kernel of an op whose autograd is the torch::autograd::Function `F`: register it as
// &autograd_kernel<F, number of outputs, the op's parameter types...>.
template <typename F, size_t kOutputs, typename... Args>
auto autograd_kernel(Args... args) {
  return as_tuple(F::apply(args...), std::make_index_sequence<kOutputs>{});
}

}  // namespace autograd
}  // namespace kdops
