// Autograd for the forward ops, in C++ (registered at the Autograd key in registration.cpp).
//
// Why C++: torch's own activations pay ~3 us per call for autograd; the same formula registered from Python
// (torch.library.register_autograd) pays ~25 us, a fifth of a leaky_relu on 2^20 floats. The first
// derivative runs the fused <name>_backward kernel; that op's own autograd (the double backward and its
// forward-mode derivative, rarely on a hot path) stays in Python, in fastact/ops.py, and the engine reaches
// it through the dispatcher when create_graph is set. torch.compile traces through this layer as through
// torchvision's C++ autograd: the forward and backward ops are redispatched below autograd, where the Python
// fake kernels answer.
//
// A call that needs a graph is recorded with one autograd Node (ActivationNode), as PyTorch's generated code
// records its own ops: it saves x and the parameter (LeakyReLU, where it can, only x's sign: SignMaskNode),
// never intermediates, and costs about what a torch op
// costs (a torch::autograd::Function cost ~6 us more per call, and torch.func refuses it). The node works
// with torch.func transforms (grad, vjp, jacrev, vmap of those) and compiled autograd. Forward mode
// (torch.autograd.forward_ad, torch.func.jvp / jacfwd / hessian): the output's tangent is f_x * t_x, from the
// backward kernel, plus f_p * t_p for a tensor parameter. Inside torch.func transforms the derivatives are
// computed with torch ops (input_partial, param_partial) rather than the fused backward, whose own autograd
// is Python and cannot run there; torch.func then differentiates and batches those ops itself.
#pragma once

#include <array>
#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/FuncTorchTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/version.h>

#include "fork_safe.h"
#include "ops.h"

// Compiled autograd's interface for lifting a node into its graph (PyCompilerInterface::bind_function with a
// schema) exists from torch 2.7.
#define FASTACT_LIFTS_NODES (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 7))

namespace fastact::autograd {

using at::Tensor;
using torch::autograd::variable_list;

// True when a graph must be recorded (grad mode on and an input requires grad); otherwise the kernel below
// autograd is called directly, skipping the node.
inline bool needs_graph(std::initializer_list<const Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : inputs) {
    if (t->requires_grad()) return true;
  }
  return false;
}

// Inside a torch.func transform (vmap, grad, jvp, ...). Asked the way torch::autograd::Function::apply asks
// it, through functorch's thread-local state (ATen/functorch/DynamicLayer.h, which would say it directly,
// needs headers that torch does not ship); the exception is thrown only inside transforms.
inline bool in_functorch_transform() {
  const auto& tls = at::functorch::functorchTLSAccessor();
  if (!tls) return false;
  try {
    tls->checkSupportsCppAutogradFunction();
    return false;
  } catch (const c10::Error&) {
    return true;
  }
}

// Forward-mode AD uses level 0 (torch.func nests levels by wrapping tensors, not by dual levels).
constexpr uint64_t kForwardLevel = 0;

// An input's tangent (undefined if it has none), and the input without it (the kernels compute the primal
// output; its tangent is attached afterwards).
struct Dual {
  Tensor primal;
  Tensor tangent;
  explicit Dual(const Tensor& t) : tangent(t.defined() ? t._fw_grad(kForwardLevel) : Tensor()) {
    primal = tangent.defined() ? t._fw_primal(kForwardLevel) : t;
  }
};

// A one-element or per-channel (dim 1) parameter, broadcastable against x.
inline Tensor channel_view(const Tensor& param, const Tensor& x) {
  // (sym_ sizes: make_fx's symbolic tracing of torch.func transforms reaches here with symbolic shapes)
  if (param.sym_numel() == 1) return param.reshape({});
  std::vector<c10::SymInt> shape(x.dim(), 1);
  shape[1] = -1;
  return param.reshape_symint(shape);
}

// The type the derivative formulas run in: float for the half types, or what holds x and the parameter.
inline at::ScalarType formula_type(const Tensor& x, const Tensor& param) {
  const auto t = at::promote_types(x.scalar_type(), at::kFloat);
  return param.defined() ? at::promote_types(t, param.scalar_type()) : t;
}

// beta x, the Swish argument, with beta = 0 giving z = 0 also at x = +-inf or NaN (f = x / 2, as the kernels
// take it, where beta x would be NaN); it stays beta times x, so that its derivative in beta is x, at beta = 0 too.
inline Tensor swish_argument(const Tensor& beta, const Tensor& x) {
  return beta * at::where((beta == 0).logical_and(x.isfinite().logical_not()), at::zeros_like(x), x);
}

// df/dparam, elementwise (unreduced), for the activations with a tensor parameter; in torch ops, so that a
// tangent built from it stays differentiable.
inline Tensor param_partial(ActivationId activation, const Tensor& x_in, const Tensor& param) {
  const Tensor x = x_in.to(formula_type(x_in, param));
  const Tensor p = channel_view(param, x);
  switch (activation) {
    case ActivationId::Swish: {
      // x^2 s(1 - s) with s(1 - s) = sigmoid(z) sigmoid(-z) (1 - s cancels to 0 early); x zeroed where that factor
      // is 0, so that x = +-inf gives the limit 0, not inf * 0 (in value or gradient).
      const Tensor z = swish_argument(p, x);
      const Tensor q = at::sigmoid(z) * at::sigmoid(-z);
      const Tensor x_near = at::where(q == 0, at::zeros_like(x), x);
      return x_near * q * x_near;
    }
    case ActivationId::Leaky:  // prelu: x where x <= 0, else 0
      return at::where(x > 0, at::zeros_like(x), x);
    default:
      TORCH_CHECK(false, "fastact: no parameter derivative for this activation");
  }
}

// grad * df/dparam, elementwise. PReLU's term is selected after the product, as in torch's formula (and the
// kernels): 0 where x > 0 also for an inf or NaN grad.
inline Tensor param_gradient(ActivationId activation, const Tensor& grad, const Tensor& x_in, const Tensor& param) {
  if (activation == ActivationId::Leaky) {
    const Tensor x = x_in.to(formula_type(x_in, param));
    const Tensor term = grad * x;
    return at::where(x > 0, at::zeros_like(term), term);
  }
  return grad * param_partial(activation, x_in, param);
}

inline bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(kForwardLevel).defined(); }

// Calls a backward op from a backward function. With create_graph (grad mode on), or inputs that carry
// tangents (forward-over-reverse), it goes through the op's Autograd kernel, which records the double
// backward and computes the tangent (fastact/ops.py); otherwise it goes below autograd: that kernel is Python,
// and entering it from the autograd engine costs ~50 us a call, more than the kernel of a 4 MB tensor.
template <typename Fn>
auto call_backward(std::initializer_list<const Tensor*> inputs, Fn&& fn) {
  bool through_autograd = at::GradMode::is_enabled();
  for (const Tensor* t : inputs) through_autograd = through_autograd || has_tangent(*t);
  if (through_autograd) return fn();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return fn();
}

// df/dx, elementwise, in torch ops: the first derivative inside torch.func transforms, which differentiate these
// ops again for a second derivative. They are torch's formulas, at torch's speed (per-sample gradients run them
// for every sample) and accuracy: where e^-|z| is subnormal (|z| > 87 in float32) and, for a second derivative,
// where sigmoid's and tanh's own derivatives cancel (z > 17, x > 9), they have the digits torch's have, not the
// fused kernels' (the eager double backward uses fastact/reference.py's tail-exact forms). `param` is undefined
// for Mish; for LeakyReLU and fixed-beta Swish it is the float as a 0-d tensor, `nonzero_param` when it is
// known not to be 0.
inline Tensor input_partial(ActivationId activation, const Tensor& x_in, const Tensor& param,
                            bool nonzero_param = false) {
  const Tensor x = x_in.to(formula_type(x_in, param));
  switch (activation) {
    case ActivationId::Swish: {  // s + z s (1 - s), z = beta x, s = sigmoid(z)
      const Tensor b = channel_view(param, x);
      const Tensor z = nonzero_param ? b * x : swish_argument(b, x);
      const Tensor s = at::sigmoid(z);
      const Tensor q = s * at::sigmoid(-z);
      // z zeroed where s (1 - s) is 0 (z may be inf there): no inf * 0, in value or gradient
      return s + at::where(q == 0, at::zeros_like(z), z) * q;
    }
    case ActivationId::Mish: {  // t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))
      const Tensor t = at::tanh(at::softplus(x));
      const Tensor d = 1 - t * t;
      const Tensor s = at::sigmoid(x);
      // x zeroed where the second term vanishes (x may be inf there): no inf * 0, in value or gradient
      return t + at::where((d == 0).logical_or(s == 0), at::zeros_like(x), x) * s * d;
    }
    case ActivationId::Leaky: {
      // where() leaves x out of the graph (a condition has no derivative); as torch's leaky_relu_backward, the
      // result stays connected to x, with a zero derivative, so that a gradient of a gradient can be taken.
      const Tensor connected = at::leaky_relu_backward(at::zeros_like(x), x, 0.0, false);
      return at::where(x > 0, at::ones_like(x), channel_view(param, x).expand_as(x)) + connected;
    }
  }
  TORCH_CHECK(false, "fastact: unknown activation");
}

// The sum of an elementwise tensor over everything but the parameter's channel (adjoint of channel_view).
inline Tensor reduce_to_param(const Tensor& t, const Tensor& param) {
  if (param.sym_numel() == 1) return t.sum().reshape_symint(param.sym_sizes()).to(param.scalar_type());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d != 1) dims.push_back(d);
  }
  return t.sum(dims).reshape_symint(param.sym_sizes()).to(param.scalar_type());
}

// The parameter of one call, whatever its kind: a tensor (learnable), a float, or nothing.
struct CallParam {
  Tensor tensor;
  double scalar = 0.0;
};

// How to call one activation's forward and backward ops, per kind of parameter.
template <ParamKind K, typename Info>
struct OpCalls;

template <typename Info>
struct OpCalls<ParamKind::None, Info> {
  static Tensor forward(const Tensor& x, const CallParam&) {
    static OpSlot<Tensor(const Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name);
    return op.call(x);
  }
  static std::tuple<Tensor, Tensor> backward(const Tensor& grad, const Tensor& x, const CallParam&) {
    static OpSlot<Tensor(const Tensor&, const Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "_backward");
    return {op.call(grad, x), Tensor()};
  }
};

template <typename Info>
struct OpCalls<ParamKind::Scalar, Info> {
  static Tensor forward(const Tensor& x, const CallParam& p) {
    static OpSlot<Tensor(const Tensor&, double)> op_slot;
    const auto& op = op_slot.get(Info::get().name);
    return op.call(x, p.scalar);
  }
  static std::tuple<Tensor, Tensor> backward(const Tensor& grad, const Tensor& x, const CallParam& p) {
    static OpSlot<Tensor(const Tensor&, const Tensor&, double)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "_backward");
    return {op.call(grad, x, p.scalar), Tensor()};
  }
};

template <typename Info>
struct OpCalls<ParamKind::Tensor, Info> {
  static Tensor forward(const Tensor& x, const CallParam& p) {
    static OpSlot<Tensor(const Tensor&, const Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name);
    return op.call(x, p.tensor);
  }
  static std::tuple<Tensor, Tensor> backward(const Tensor& grad, const Tensor& x, const CallParam& p) {
    static OpSlot<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "_backward");
    return op.call(grad, x, p.tensor);
  }
};

// The derivatives of one activation, shared by every way a call is recorded.
template <ParamKind K, typename Info>
struct Derivatives {
  using Calls = OpCalls<K, Info>;

  // The parameter as a tensor for the torch-op formulas (the slope of LeakyReLU, beta of fixed Swish).
  static Tensor param_tensor(const Tensor& x, const CallParam& p) {
    if constexpr (K == ParamKind::Tensor) return p.tensor;
    if constexpr (K == ParamKind::Scalar) {
      return at::scalar_tensor(p.scalar, x.options().dtype(at::promote_types(x.scalar_type(), at::kFloat)));
    }
    return Tensor();
  }

  // A float parameter that is not 0 (SiLU's beta): the formulas skip their guard for beta = 0.
  static bool nonzero_scalar(const CallParam& p) { return K == ParamKind::Scalar && p.scalar != 0.0; }

  // d(loss)/dx and d(loss)/d(param) (undefined unless the parameter is a tensor) from d(loss)/dy.
  static std::tuple<Tensor, Tensor> gradients(const Tensor& grad, const Tensor& x_saved, const CallParam& p_saved) {
    // A saved-tensor hook may hand x and the parameter back in another dtype (say, stored in a narrower one):
    // compute in the dtype of the gradient, which is the output's and so the input's, with a parameter the op
    // accepts for it (the engine casts the parameter's gradient to the parameter's dtype).
    const auto dtype = grad.scalar_type();
    const Tensor x = x_saved.scalar_type() == dtype ? x_saved : x_saved.to(dtype);
    CallParam p = p_saved;
    if (p.tensor.defined()) {
      const auto pt = p.tensor.scalar_type();
      const auto want = dtype == at::kDouble ? at::kDouble : (pt == dtype || pt == at::kFloat ? pt : at::kFloat);
      if (want != pt) p.tensor = p.tensor.to(want);
    }
    if (!in_functorch_transform()) {
      return call_backward({&grad, &x, &p.tensor}, [&] { return Calls::backward(grad, x, p); });
    }
    const Tensor pt = param_tensor(x, p);
    Tensor grad_input = (grad * input_partial(Info::get().activation, x, pt, nonzero_scalar(p))).to(x.scalar_type());
    Tensor grad_param;
    if constexpr (K == ParamKind::Tensor) {
      grad_param = reduce_to_param(param_gradient(Info::get().activation, grad, x, pt), pt);
    }
    return {grad_input, grad_param};
  }

  // The output's tangent from the inputs' (either may be undefined, not both).
  static Tensor tangent(const Tensor& x, const CallParam& p, const Tensor& t_x, const Tensor& t_param) {
    Tensor t;
    if (t_x.defined()) {
      if (in_functorch_transform()) {
        t = (input_partial(Info::get().activation, x, param_tensor(x, p), nonzero_scalar(p)) * t_x)
                .to(x.scalar_type());
      } else {
        t = std::get<0>(Calls::backward(t_x, x, p));
      }
    }
    if (t_param.defined()) {
      const Tensor term =
          (param_partial(Info::get().activation, x, p.tensor) * channel_view(t_param, x)).to(x.scalar_type());
      t = t.defined() ? t + term : term;
    }
    return t;
  }
};

// A node's owning pointer to itself, as this torch owns nodes (see make_node below).
template <typename Ptr = decltype(torch::autograd::Edge::function), typename N>
Ptr self_pointer(N* node) {
  if constexpr (std::is_same_v<Ptr, c10::intrusive_ptr<torch::autograd::Node>>) {
    return c10::intrusive_ptr<torch::autograd::Node>::unsafe_reclaim_from_nonowning(node);
  } else {
    return node->shared_from_this();
  }
}

// Which gradients a node's backward returns (toward its first and second edge), as a node of at most two edges.
using NeedsGrad = std::array<bool, 2>;
inline NeedsGrad needs_grad_of(const torch::autograd::Node& node) {
  return {node.task_should_compute_output(0), node.num_outputs() > 1 && node.task_should_compute_output(1)};
}

// Compiled autograd (torch._dynamo.compiled_autograd): the node lifted into its graph as one call of
// N::backward_packed(grads, args), as torch's own nodes are lifted (run in the trace instead, a node would be
// handed placeholders for the gradients that lifted nodes produce). args: the node's needs_grad_of, then what
// pack(PackedArgs&) adds, of the types schema_tail lists; `saved_values` are swapped for the traced ones
// meanwhile. Dynamo traces that call in turn: the backward ops have fake kernels. (torch < 2.7 has no
// interface to lift a node through: the node then runs in the trace.)
template <typename N, typename PackFn>
variable_list lift_into_compiled_autograd(N& node, const variable_list& grads,
                                          torch::dynamo::autograd::SwapSavedVariables& saved,
                                          const std::vector<torch::autograd::SavedVariable*>& saved_values,
                                          const std::string& name, const std::vector<at::TypePtr>& schema_tail,
                                          PackFn&& pack) {
  for (auto* value : saved_values) saved.before(*value);
#if FASTACT_LIFTS_NODES
  using torch::dynamo::autograd::IValuePacker;
  const auto& compiler = torch::dynamo::autograd::getPyCompilerInterface();
  static const std::string function_name = [&] {
    // Bound once per process (the Python namespace it lands in is global), as torch's generated nodes are.
    std::vector<at::TypePtr> schema{IValuePacker<NeedsGrad>::packed_type()};
    schema.insert(schema.end(), schema_tail.begin(), schema_tail.end());
    return compiler->bind_function(saved.get_py_compiler(), name, &N::backward_packed, schema);
  }();
  torch::dynamo::autograd::PackedArgs packed;
  packed.pack(needs_grad_of(node));
  pack(packed);
  const auto output_metadata = IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
      torch::dynamo::autograd::get_input_metadata(node.next_edges()));
  auto result = compiler->call_function(saved.get_py_compiler(), "apply_functional", function_name, grads,
                                        packed.vec(), output_metadata);
#else
  auto result = node.apply(variable_list(grads));
#endif
  for (auto* value : saved_values) saved.after(*value);
  return result;
}

// The graph node of one call: it saves x and the parameter (with their tangents, so that forward-over-reverse
// differentiates the backward too), as PyTorch's generated code does for its own ops.
template <ParamKind K, typename Info>
struct ActivationNode : torch::autograd::Node {
  torch::autograd::SavedVariable x;
  bool x_is_output = false;                     // saved after an in-place write, as this node's output
  torch::autograd::SavedVariable param_tensor;  // K == Tensor
  double param_scalar = 0.0;                    // K == Scalar

  // The node's backward as a function of the saved values alone, so that compiled autograd can put it in its
  // graph as one call (backward_packed).
  static variable_list backward(const variable_list& grads, NeedsGrad needs, const Tensor& x, const CallParam& p) {
    const size_t outputs = K == ParamKind::Tensor ? 2 : 1;
    if (!grads[0].defined()) return variable_list(outputs);
    auto [grad_input, grad_param] = Derivatives<K, Info>::gradients(grads[0], x, p);
    variable_list out{needs[0] ? grad_input : Tensor()};
    if (outputs > 1) out.push_back(needs[1] ? grad_param : Tensor());
    return out;
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);  // against release_variables in a concurrent backward
    if (!grads[0].defined()) return variable_list(num_outputs());
    CallParam p{K == ParamKind::Tensor ? param_tensor.unpack() : Tensor(), param_scalar};
    // (x may be saved as the node's own output, by an in-place call: unpacking it then needs the node)
    return backward(grads, needs_grad_of(*this), x.unpack(self_pointer(this)), p);
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x.reset_data();
    param_tensor.reset_data();
  }
  std::string name() const override { return std::string("fastact::") + Info::get().name + "_backward"; }

  // Compiled autograd: the node's inputs; then, when it traces, the node lifted into its graph.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(x, x_is_output);
    if (K == ParamKind::Tensor) args.collect(param_tensor, /*is_output=*/false);
    args.collect(param_scalar);
  }
  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& saved) override {
    using torch::dynamo::autograd::IValuePacker;
    std::vector<at::TypePtr> schema{IValuePacker<Tensor>::packed_type()};
    if (K == ParamKind::Tensor) schema.push_back(IValuePacker<Tensor>::packed_type());
    schema.push_back(IValuePacker<double>::packed_type());
    std::vector<torch::autograd::SavedVariable*> values{&x};
    if (K == ParamKind::Tensor) values.push_back(&param_tensor);
    // (x is now the traced value, saved as a plain input, so unpacked without the node)
    return lift_into_compiled_autograd(*this, grads, saved, values,
                                       std::string("fastact_") + Info::get().name + "_backward", schema,
                                       [&](torch::dynamo::autograd::PackedArgs& packed) {
                                         packed.pack(x.unpack());
                                         if (K == ParamKind::Tensor) packed.pack(param_tensor.unpack());
                                         packed.pack(param_scalar);
                                       });
  }

  static variable_list backward_packed(const variable_list& grads, const std::vector<c10::IValue>& args) {
    torch::dynamo::autograd::PackedArgs packed(args);
    const auto needs = packed.unpack<NeedsGrad>();
    const auto x = packed.unpack<Tensor>();
    const auto param = K == ParamKind::Tensor ? packed.unpack<Tensor>() : Tensor();
    return backward(grads, needs, x, CallParam{param, packed.unpack<double>()});
  }
};

// torch.autograd.graph.node_creation_hook (torch >= 2.14) sees a node once it is complete, as torch's own: its
// edges, output metadata and saved values in place.
template <typename NodePtr>
void fire_creation_hooks(const NodePtr& node) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 14)
  torch::autograd::fire_node_creation_hooks(node);
#endif
}

// A new node, owned the way this torch owns them: c10::intrusive_ptr (torch >= 2.13) or std::shared_ptr with
// torch's deleter (older; found by argument-dependent lookup, so that it is only named where it exists).
template <typename T, typename Ptr = decltype(torch::autograd::Edge::function)>
auto make_node() {
  if constexpr (std::is_same_v<Ptr, c10::intrusive_ptr<torch::autograd::Node>>) {
    return c10::make_intrusive<T>();
  } else {
    return std::shared_ptr<T>(new T(), [](T* node) { deleteNode(node); });
  }
}

// ---------------------------------------------------------------------------------------------------------
// LeakyReLU's node where it saves x's sign mask instead of x: its backward needs only whether x > 0, one bit per
// element, so it saves 1/32 of a float32 x (at 2^20 elements 0.13 MB against 4.2 MB) and its backward reads the
// bits and grad instead of x and grad. Used for plain eager calls on contiguous CPU tensors (saves_sign_mask);
// everywhere else (torch.func, compile and export, dispatch modes, tangents, CUDA, other layouts) LeakyReLU keeps
// ActivationNode, which saves x.
inline std::atomic<bool>& sign_mask_enabled() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

// No torch.func transform, dispatch mode, tensor subclass, or tracing by torch.compile / torch.export (which see
// fake and functional tensors): their graphs are built from the ops, and read the op's saved x.
inline bool plain_eager(const Tensor& x) {
  const c10::DispatchKeySet python_keys{c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                        c10::DispatchKey::Functionalize};
  return !x.key_set().has_any(python_keys) && !x.unsafeGetTensorImpl()->has_symbolic_sizes_strides() &&
         !c10::impl::dispatch_mode_enabled() && !c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python) &&
         !in_functorch_transform();
}

inline bool saves_sign_mask(const Tensor& x) {
  // (plain_eager first: the sizes of a traced tensor may be symbolic, which sign_mask_supported cannot read)
  return sign_mask_enabled().load(std::memory_order_relaxed) && plain_eager(x) && sign_mask_supported(x);
}

// The mask's bits as a bool tensor shaped like `like`, in torch ops (for torch.func transforms of a backward).
inline Tensor sign_from_mask(const Tensor& mask, const Tensor& like) {
  const Tensor shifts = at::arange(8, mask.options());
  return mask.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and(1).flatten().slice(0, 0, like.numel())
      .to(at::kBool).view(like.sizes());
}

struct SignMaskNode;
Tensor record_mask_backward(const Tensor& grad, const Tensor& mask, double slope, const torch::autograd::Edge* x_edge);

// grad_input = grad where x > 0, else grad * slope: LeakyReLU's first derivative applied to grad. It is linear in
// grad, so its derivative toward grad is itself; toward x it is zero. With x_edge (the backward of LeakyReLU's
// node), a recorded graph keeps that zero gradient toward x, as torch's leaky_relu_backward does.
inline Tensor mask_backward(const Tensor& grad, const Tensor& mask, double slope,
                            const torch::autograd::Edge* x_edge) {
  if (in_functorch_transform()) {  // vmap over the backward (is_grads_batched): torch ops, which it batches
    return at::where(sign_from_mask(mask, grad), grad, grad * slope);
  }
  const Dual g(grad);
  const bool x_needs = x_edge != nullptr && x_edge->is_valid();
  Tensor grad_input;
  if (at::GradMode::is_enabled() && (grad.requires_grad() || x_needs)) {
    grad_input = record_mask_backward(g.primal, mask, slope, x_edge);
  } else {
    static OpSlot<Tensor(const Tensor&, const Tensor&, double)> op_slot;
    const auto& op = op_slot.get("leaky_relu_mask_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    grad_input = op.call(g.primal, mask, slope);
  }
  if (g.tangent.defined()) {  // linear in grad: the tangent is the same map of grad's tangent
    grad_input._set_fw_grad(mask_backward(g.tangent, mask, slope, nullptr), kForwardLevel, /*is_inplace_op=*/false);
  }
  return grad_input;
}

// The node of LeakyReLU (next edges: [x]) and of its backward (next edges: [grad, x], for the gradient of a
// gradient): both map the incoming gradient through the mask toward their first edge; the second gets zeros.
struct SignMaskNode : torch::autograd::Node {
  torch::autograd::SavedVariable mask;
  double negative_slope = 0.0;

  static variable_list backward(const variable_list& grads, NeedsGrad needs, const Tensor& mask_saved, double slope,
                                size_t outputs, const torch::autograd::Edge* x_edge) {
    variable_list out(outputs);
    if (!grads[0].defined()) return out;
    // (a saved-tensor hook may have handed the mask back in another dtype)
    const Tensor mask = mask_saved.scalar_type() == at::kByte ? mask_saved : mask_saved.to(at::kByte);
    if (needs[0]) out[0] = mask_backward(grads[0], mask, slope, x_edge);
    if (outputs > 1 && needs[1]) out[1] = at::zeros_like(grads[0]);  // torch's zeros_like(grad) toward x
    return out;
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto x_edge = next_edge(num_outputs() - 1);
    return backward(grads, needs_grad_of(*this), mask.unpack(), negative_slope, num_outputs(), &x_edge);
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    mask.reset_data();
  }
  std::string name() const override {
    return num_outputs() == 1 ? "fastact::leaky_relu_backward" : "fastact::leaky_relu_backward_backward";
  }

  // Compiled autograd: lifted into its graph as ActivationNode is.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(mask, /*is_output=*/false);
    args.collect(negative_slope);
    args.collect(num_outputs() > 1);
  }
  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& saved) override {
    using torch::dynamo::autograd::IValuePacker;
    return lift_into_compiled_autograd(
        *this, grads, saved, {&mask}, "fastact_leaky_relu_mask_backward",
        {IValuePacker<Tensor>::packed_type(), IValuePacker<double>::packed_type(), IValuePacker<bool>::packed_type()},
        [&](torch::dynamo::autograd::PackedArgs& packed) {
          packed.pack(mask.unpack());
          packed.pack(negative_slope);
          packed.pack(num_outputs() > 1);
        });
  }

  static variable_list backward_packed(const variable_list& grads, const std::vector<c10::IValue>& args) {
    torch::dynamo::autograd::PackedArgs packed(args);
    const auto needs = packed.unpack<NeedsGrad>();
    const auto mask = packed.unpack<Tensor>();
    const auto slope = packed.unpack<double>();
    const size_t outputs = packed.unpack<bool>() ? 2 : 1;
    return backward(grads, needs, mask, slope, outputs, nullptr);
  }
};

// mask_backward's result recorded under a SignMaskNode with edges [grad, x] (or [grad] without x_edge).
inline Tensor record_mask_backward(const Tensor& grad, const Tensor& mask, double slope,
                                   const torch::autograd::Edge* x_edge) {
  auto node = make_node<SignMaskNode>();
  auto edges = torch::autograd::collect_next_edges(grad);
  if (x_edge != nullptr) edges.push_back(*x_edge);
  node->set_next_edges(std::move(edges));
  node->mask = torch::autograd::SavedVariable(mask, /*is_output=*/false);
  node->negative_slope = slope;
  Tensor grad_input;
  {
    static OpSlot<Tensor(const Tensor&, const Tensor&, double)> op_slot;
    const auto& op = op_slot.get("leaky_relu_mask_backward");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    grad_input = op.call(grad, mask, slope);
  }
  torch::autograd::set_history(grad_input, node);
  fire_creation_hooks(node);
  return grad_input;
}

// LeakyReLU of x (saves_sign_mask(x)) recorded under a SignMaskNode that saves x's sign mask.
inline Tensor record_leaky_relu_with_sign_mask(const Tensor& x, double slope) {
  auto node = make_node<SignMaskNode>();
  node->set_next_edges(torch::autograd::collect_next_edges(x));
  node->negative_slope = slope;
  Tensor y, mask;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(y, mask) = leaky_relu_with_sign_mask(x, slope);
  }
  node->mask = torch::autograd::SavedVariable(mask, /*is_output=*/false);
  torch::autograd::set_history(y, node);
  fire_creation_hooks(node);
  return y;
}

// The Autograd-key kernel of fastact::leaky_relu_mask_backward, for direct calls (registration.cpp).
inline Tensor mask_backward_kernel(const Tensor& grad, const Tensor& mask, double slope) {
  return mask_backward(grad, mask, slope, nullptr);
}

// The Autograd-key kernel of one activation (registration.cpp).
template <ParamKind K, typename Info>
struct AutogradKernel {
  static Tensor call(const Tensor& x_in, const CallParam& p_in) {
    const Dual x(x_in);
    const Dual param(p_in.tensor);
    const bool has_tangent = x.tangent.defined() || param.tangent.defined();
    const CallParam p{param.primal, p_in.scalar};
    const bool graph = K == ParamKind::Tensor ? needs_graph({&x_in, &p_in.tensor}) : needs_graph({&x_in});
    Tensor y;
    if (graph) {
      if constexpr (K == ParamKind::Scalar) {
        if (Info::get().activation == ActivationId::Leaky && !has_tangent && saves_sign_mask(x_in)) {
          return record_leaky_relu_with_sign_mask(x_in, p_in.scalar);
        }
      }
      y = record_with_node(x_in, p_in);
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = OpCalls<K, Info>::forward(x.primal, p);
    }
    if (has_tangent) {
      y._set_fw_grad(Derivatives<K, Info>::tangent(x.primal, p, x.tangent, param.tangent), kForwardLevel,
                     /*is_inplace_op=*/false);
    }
    return y;
  }

  // Records y = f(x, param) under an ActivationNode that saves the inputs as they are (tangents included).
  static Tensor record_with_node(const Tensor& x, const CallParam& p) {
    auto node = make_node<ActivationNode<K, Info>>();
    if constexpr (K == ParamKind::Tensor) {
      node->set_next_edges(torch::autograd::collect_next_edges(x, p.tensor));
      node->param_tensor = torch::autograd::SavedVariable(p.tensor, /*is_output=*/false);
    } else {
      node->set_next_edges(torch::autograd::collect_next_edges(x));
    }
    node->x = torch::autograd::SavedVariable(x, /*is_output=*/false);
    node->param_scalar = p.scalar;
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // the kernel reads the values; tangents stay out
      y = OpCalls<K, Info>::forward(x, p);
    }
    torch::autograd::set_history(y, node);
    fire_creation_hooks(node);
    return y;
  }
};

// The kernels of the out= overloads at two dispatch layers, as torch's out= ops have them:
// - Autograd: the out= variants are not differentiable, so they refuse arguments that need a gradient or carry a
//   tangent (the result would silently have neither).
// - ADInplaceOrView: bumps the version counter of what they write, so that a graph that saved one of those
//   tensors raises instead of using the new values. This layer also runs where Autograd does not: inside
//   torch.inference_mode() on tensors made outside it, and outside it on inference tensors (refused).
using NamedInputs = std::initializer_list<std::pair<const char*, const Tensor*>>;
using NamedOutputs = std::initializer_list<std::pair<const char*, Tensor*>>;

struct OutAutogradLayer {
  using Below = at::AutoDispatchBelowAutograd;
  static void after(NamedOutputs /*outputs*/) {}
  static void before(const char* op, NamedInputs inputs, NamedOutputs outputs) {
    auto check = [&](const char* name, const Tensor& t) {
      if (!t.defined()) return;
      TORCH_CHECK(!(at::GradMode::is_enabled() && t.requires_grad()), "fastact.", op, ": ", name,
                  " requires grad, but the out= variants are not differentiable; call the op without out=");
      TORCH_CHECK(!has_tangent(t), "fastact.", op, ": ", name,
                  " has a forward-mode tangent, but the out= variants are not differentiable; call the op without "
                  "out=");
    };
    for (const auto& [name, t] : inputs) check(name, *t);
    for (const auto& [name, t] : outputs) check(name, *t);
  }
};

struct OutInplaceOrViewLayer {
  using Below = at::AutoDispatchBelowADInplaceOrView;
  static void before(const char* op, NamedInputs /*inputs*/, NamedOutputs outputs) {
    for (const auto& [name, t] : outputs) {  // checked before anything is written
      TORCH_CHECK(!t->is_inference() || c10::InferenceMode::is_enabled(), "fastact.", op, ": ", name,
                  " is an inference tensor, which can only be written inside torch.inference_mode()");
    }
  }
  // After the write, as torch's ops bump: a call the kernel refused leaves the version as it was.
  static void after(NamedOutputs outputs) {
    for (const auto& [name, t] : outputs) torch::autograd::impl::bump_version(*t);
  }
};

// The written tensor's name in error messages: x itself for an in-place call (which passes out=x).
inline const char* out_name(const Tensor& out, const Tensor& x) { return out.is_same(x) ? "x (written in place)" : "out"; }

template <ParamKind K, typename Info, typename Layer>
struct OutKernels;

template <typename Info, typename Layer>
struct OutKernels<ParamKind::None, Info, Layer> {
  static Tensor& forward(const Tensor& x, Tensor& out) {
    static OpSlot<Tensor&(const Tensor&, Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "", "out");
    Layer::before(Info::get().name, {{"x", &x}}, {{out_name(out, x), &out}});
    {
      typename Layer::Below below;
      op.call(x, out);
    }
    Layer::after({{"out", &out}});
    return out;
  }
  static Tensor& backward(const Tensor& grad, const Tensor& x, Tensor& grad_input) {
    static OpSlot<Tensor&(const Tensor&, const Tensor&, Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "_backward", "out");
    Layer::before(Info::get().name, {{"grad", &grad}, {"x", &x}}, {{"grad_input", &grad_input}});
    {
      typename Layer::Below below;
      op.call(grad, x, grad_input);
    }
    Layer::after({{"grad_input", &grad_input}});
    return grad_input;
  }
};

template <typename Info, typename Layer>
struct OutKernels<ParamKind::Scalar, Info, Layer> {
  static Tensor& forward(const Tensor& x, double param, Tensor& out) {
    static OpSlot<Tensor&(const Tensor&, double, Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "", "out");
    Layer::before(Info::get().name, {{"x", &x}}, {{out_name(out, x), &out}});
    {
      typename Layer::Below below;
      op.call(x, param, out);
    }
    Layer::after({{"out", &out}});
    return out;
  }
  static Tensor& backward(const Tensor& grad, const Tensor& x, double param, Tensor& grad_input) {
    static OpSlot<Tensor&(const Tensor&, const Tensor&, double, Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "_backward", "out");
    Layer::before(Info::get().name, {{"grad", &grad}, {"x", &x}}, {{"grad_input", &grad_input}});
    {
      typename Layer::Below below;
      op.call(grad, x, param, grad_input);
    }
    Layer::after({{"grad_input", &grad_input}});
    return grad_input;
  }
};

template <typename Info, typename Layer>
struct OutKernels<ParamKind::Tensor, Info, Layer> {
  static Tensor& forward(const Tensor& x, const Tensor& param, Tensor& out) {
    static OpSlot<Tensor&(const Tensor&, const Tensor&, Tensor&)> op_slot;
    const auto& op = op_slot.get(Info::get().name, "", "out");
    Layer::before(Info::get().name, {{"x", &x}, {Info::get().param_name, &param}}, {{out_name(out, x), &out}});
    {
      typename Layer::Below below;
      op.call(x, param, out);
    }
    Layer::after({{"out", &out}});
    return out;
  }
  static std::tuple<Tensor&, Tensor&> backward(const Tensor& grad, const Tensor& x, const Tensor& param,
                                               Tensor& grad_input, Tensor& grad_param) {
    static OpSlot<std::tuple<Tensor&, Tensor&>(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&)>
        op_slot;
    const auto& op = op_slot.get(Info::get().name, "_backward", "out");
    const std::string grad_param_name = std::string("grad_") + Info::get().param_name;  // as in the schema
    Layer::before(Info::get().name, {{"grad", &grad}, {"x", &x}, {Info::get().param_name, &param}},
                  {{"grad_input", &grad_input}, {grad_param_name.c_str(), &grad_param}});
    {
      typename Layer::Below below;
      op.call(grad, x, param, grad_input, grad_param);
    }
    Layer::after({{"grad_input", &grad_input}, {grad_param_name.c_str(), &grad_param}});
    return {grad_input, grad_param};
  }
};

template <ParamKind K, typename Info>
using OutAutograd = OutKernels<K, Info, OutAutogradLayer>;
template <ParamKind K, typename Info>
using OutInplaceOrView = OutKernels<K, Info, OutInplaceOrViewLayer>;

// The kernel to register, with the op's signature.
template <ParamKind K, typename Info>
struct AutogradEntry;

template <typename Info>
struct AutogradEntry<ParamKind::None, Info> {
  static Tensor kernel(const Tensor& x) { return AutogradKernel<ParamKind::None, Info>::call(x, {}); }
};

template <typename Info>
struct AutogradEntry<ParamKind::Scalar, Info> {
  static Tensor kernel(const Tensor& x, double param) {
    return AutogradKernel<ParamKind::Scalar, Info>::call(x, {Tensor(), param});
  }
};

template <typename Info>
struct AutogradEntry<ParamKind::Tensor, Info> {
  static Tensor kernel(const Tensor& x, const Tensor& param) {
    return AutogradKernel<ParamKind::Tensor, Info>::call(x, {param, 0.0});
  }
};

// x = f(x) in place, for eager calls on plain tensors (fastact._C.<name>_, from fastact/functional.py; compile,
// tracing, torch.func and forward AD keep the Python path). Recorded as PyTorch's generated code records its
// in-place activations (silu_, mish_, leaky_relu_): torch's check of what autograd lets be written; a node that
// saves a clone of x's old values, taken through autograd so that a double backward reaches x's history (or, for
// LeakyReLU with a slope >= 0, saves x afterwards as the output, whose sign is x's, as leaky_relu_ does); the
// write bumps x's version; x's history moves onto the node (through CopySlices for a view). Clone and kernel
// pass over x 4 times, as torch's do; the Python form this replaces also copied the result back (6 passes).
template <ParamKind K, typename Info>
struct InplaceKernel {
  static_assert(K != ParamKind::Tensor, "the in-place forms are those of the activations without a tensor parameter");

  static void call(const Tensor& x, const CallParam& p) {
    const bool graph = needs_graph({&x});
    torch::autograd::check_inplace(x, graph);
    if (!graph) return write(x, p);
    const bool from_output = Info::get().activation == ActivationId::Leaky && p.scalar >= 0;
    auto node = make_node<ActivationNode<K, Info>>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->param_scalar = p.scalar;
    if (!from_output) node->x = torch::autograd::SavedVariable(x.clone(), /*is_output=*/false);
    write(x, p);
    node->add_input_metadata(x);
    torch::autograd::impl::rebase_history(x, {node, 0});
    if (from_output) {
      node->x = torch::autograd::SavedVariable(x, /*is_output=*/true, /*is_inplace_on_view=*/x.is_view());
      node->x_is_output = true;
    }
    fire_creation_hooks(node);
  }

 private:
  // The out= op's ADInplaceOrView kernel: the kernel (which reads each element before writing it), then the
  // version bump.
  static void write(const Tensor& x, const CallParam& p) {
    Tensor out = x;
    if constexpr (K == ParamKind::None) {
      OutInplaceOrView<K, Info>::forward(x, out);
    } else {
      OutInplaceOrView<K, Info>::forward(x, p.scalar, out);
    }
  }
};

}  // namespace fastact::autograd
