// Autograd for the forward ops, in C++ (registered at the Autograd key in registration.cpp).
//
// Why C++: torch's own activations pay ~3 us per call for autograd; the same formula registered from Python
// (torch.library.register_autograd) pays ~25 us, a fifth of a leaky_relu on 2^20 floats. The first
// derivative runs the fused <name>_backward kernel; that op's own autograd (the double backward, rarely on a
// hot path) stays in Python, in fastact/ops.py, and the engine reaches it through the dispatcher when
// create_graph is set. torch.compile traces through this layer as through torchvision's C++ autograd: the
// forward and backward ops are redispatched below autograd, where the Python fake kernels answer.
#pragma once

#include <string>
#include <tuple>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include "ops.h"

namespace fastact::autograd {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dispatcher's handle of "fastact::<name>" (overload ""), looked up once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(("fastact::" + name).c_str(), "").typed<Signature>();
}

// True when no graph needs recording: the kernel below autograd can be called directly, skipping the node.
inline bool needs_graph(std::initializer_list<const Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : inputs) {
    if (t->requires_grad()) return true;
  }
  return false;
}

// One torch::autograd::Function per kind of parameter; `Info` (registration.cpp) names the activation.
// Calls a backward op from a backward function. With create_graph (grad mode on) it goes through the op's
// Autograd kernel, which records the double backward (fastact/ops.py); without, it goes below autograd: that
// kernel is Python, and entering it from the autograd engine costs ~50 us a call, more than the kernel of a
// 4 MB tensor.
template <typename Fn>
auto call_backward(Fn&& fn) {
  if (at::GradMode::is_enabled()) return fn();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return fn();
}

template <ParamKind K, typename Info>
struct ActivationFunction;

template <typename Info>
struct ActivationFunction<ParamKind::None, Info>
    : torch::autograd::Function<ActivationFunction<ParamKind::None, Info>> {
  static const auto& op() {
    static const auto handle = find_op<Tensor(const Tensor&)>(Info::get().name);
    return handle;
  }
  static const auto& backward_op() {
    static const auto handle = find_op<Tensor(const Tensor&, const Tensor&)>(std::string(Info::get().name) + "_backward");
    return handle;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& x) {
    ctx->save_for_backward({x});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op().call(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {call_backward([&] { return backward_op().call(grads[0], saved[0]); })};
  }
  static Tensor kernel(const Tensor& x) {
    if (!needs_graph({&x})) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return op().call(x);
    }
    return ActivationFunction::apply(x);
  }
};

template <typename Info>
struct ActivationFunction<ParamKind::Scalar, Info>
    : torch::autograd::Function<ActivationFunction<ParamKind::Scalar, Info>> {
  static const auto& op() {
    static const auto handle = find_op<Tensor(const Tensor&, double)>(Info::get().name);
    return handle;
  }
  static const auto& backward_op() {
    static const auto handle =
        find_op<Tensor(const Tensor&, const Tensor&, double)>(std::string(Info::get().name) + "_backward");
    return handle;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double param) {
    ctx->save_for_backward({x});
    ctx->saved_data["param"] = param;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op().call(x, param);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double param = ctx->saved_data["param"].toDouble();
    return {call_backward([&] { return backward_op().call(grads[0], saved[0], param); }), Tensor()};
  }
  static Tensor kernel(const Tensor& x, double param) {
    if (!needs_graph({&x})) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return op().call(x, param);
    }
    return ActivationFunction::apply(x, param);
  }
};

template <typename Info>
struct ActivationFunction<ParamKind::Tensor, Info>
    : torch::autograd::Function<ActivationFunction<ParamKind::Tensor, Info>> {
  static const auto& op() {
    static const auto handle = find_op<Tensor(const Tensor&, const Tensor&)>(Info::get().name);
    return handle;
  }
  static const auto& backward_op() {
    static const auto handle = find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&)>(
        std::string(Info::get().name) + "_backward");
    return handle;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& param) {
    ctx->save_for_backward({x, param});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op().call(x, param);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_input, grad_param] = call_backward([&] { return backward_op().call(grads[0], saved[0], saved[1]); });
    return {ctx->needs_input_grad(0) ? grad_input : Tensor(), ctx->needs_input_grad(1) ? grad_param : Tensor()};
  }
  static Tensor kernel(const Tensor& x, const Tensor& param) {
    if (!needs_graph({&x, &param})) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return op().call(x, param);
    }
    return ActivationFunction::apply(x, param);
  }
};

}  // namespace fastact::autograd
