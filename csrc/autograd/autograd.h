// Shared by the autograd kernels (csrc/autograd/<op>.cpp): the hand-written backward of every native op
// lives in C++, registered to the Autograd key, so an eager fwd + bwd runs no Python (torch.library's
// Python autograd cost ~70-150 us per call, more than the whole ROI-shape head loss on a GPU). The
// Triton ops keep the same formulas in Python (kdops/ops/<op>.py); the parity tests hold both to them.
#pragma once

#include <ATen/FuncTorchTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
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

// What the fused backends' autograd supports: a first-order backward for torch.autograd (and torch.func.vmap,
// through PyTorch's per-sample fallback). One wording with kdops/_checks.py double_backward_message and
// func_transform_message (tests/ops/test_autograd_limits.py holds them equal).
inline std::string double_backward_message(const char* op) {
  return std::string("kdops.") + op +
         ": double backward (differentiating a gradient taken with create_graph=True) is not supported by the "
         "fused backends, which have a first-order backward only; use backend='reference' for higher-order "
         "gradients";
}
inline std::string func_transform_message(const char* op) {
  return std::string("kdops.") + op +
         ": torch.func transforms that differentiate (grad, vjp, jvp, jacrev, jacfwd, hessian) and forward-mode AD "
         "are not supported by the fused backends, which have a first-order backward for torch.autograd only "
         "(torch.func.vmap works); use backend='reference' for them";
}

// The base of every op's autograd Function `F` (F::kOp names the op; F::gradients is its backward). The
// gradients come from kernels that autograd cannot differentiate: without this, create_graph=True would
// give them a node whose derivative is silently zero. Here they run without grad mode, and under
// create_graph they get a node that raises double_backward_message when something differentiates them,
// whose edges lead to what they depend on (the saved inputs and the incoming gradients that require
// grad), so that torch.autograd.grad(..., inputs) reaches it. A first derivative taken with
// create_graph=True still works.
template <typename F>
struct FirstOrderFunction : torch::autograd::Function<F> {
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list sources;
    if (at::GradMode::is_enabled()) {  // create_graph=True
      for (const auto& t : ctx->get_saved_variables())
        if (t.defined() && t.requires_grad()) sources.push_back(t);
      for (const auto& g : grads)
        if (g.defined() && g.requires_grad()) sources.push_back(g);
    }
    variable_list out;
    {
      const at::NoGradGuard no_grad;
      out = F::gradients(ctx, std::move(grads));
    }
    if (sources.empty()) return out;
    const size_t count = out.size();
    out.insert(out.end(), sources.begin(), sources.end());
    const auto inputs = static_cast<int64_t>(out.size());
    auto wrapped = torch::autograd::DelayedError(double_backward_message(F::kOp), inputs).apply(std::move(out));
    wrapped.resize(count);
    return wrapped;
  }
};

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

// Whether an argument carries a forward-mode AD tangent (torch.autograd.forward_ad has one level, 0).
template <typename A>
bool has_tangent(const A&) {
  return false;
}
inline bool has_tangent(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
inline bool has_tangent(const c10::optional<at::Tensor>& t) { return t.has_value() && has_tangent(*t); }

// The Autograd-key kernel of an op whose autograd is the FirstOrderFunction `F`: register it as
// &autograd_kernel<F, number of outputs, the op's parameter types...>. Under a torch.func transform that
// differentiates, or forward-mode AD, PyTorch refuses any C++ autograd Function with a message that names
// neither the op nor what works: this one does.
template <typename F, size_t kOutputs, typename... Args>
auto autograd_kernel(Args... args) {
  if (const auto& functorch = at::functorch::functorchTLSAccessor()) {
    try {
      functorch->checkSupportsCppAutogradFunction();
    } catch (const c10::Error&) {
      TORCH_CHECK(false, func_transform_message(F::kOp));
    }
  }
  TORCH_CHECK(!(has_tangent(args) || ...), func_transform_message(F::kOp));
  return as_tuple(F::apply(args...), std::make_index_sequence<kOutputs>{});
}

}  // namespace autograd
}  // namespace kdops
