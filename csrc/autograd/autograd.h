// Shared by the autograd kernels (csrc/autograd/<op>.cpp): the hand-written backward of every native op
// lives in C++, registered to the Autograd key, so an eager fwd + bwd runs no Python (torch.library's
// Python autograd costs ~80-150 us per call, more than the whole ROI-shape head loss on a GPU). The
// Triton ops keep the same formulas in Python (kdops/ops/<op>.py); the parity tests hold both to them.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

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
inline void check_no_grad(AutogradContext* ctx, size_t index, const char* op, const char* arg) {
  TORCH_CHECK(!ctx->needs_input_grad(index), "kdops.", op, ": ", arg, " gets no gradient; pass ", arg, ".detach()");
}

}  // namespace autograd
}  // namespace kdops
