// The one registration point: the schema of every op, and its kernels for CPU and CUDA, generated from
// FASTACT_FOR_EACH_ACTIVATION (ops.h). Each activation <name> gets four ops:
//   <name>(Tensor x[, param]) -> Tensor
//   <name>.out(Tensor x[, param], *, Tensor(a!) out) -> Tensor(a!)
//   <name>_backward(Tensor grad, Tensor x[, param]) -> Tensor            (-> (Tensor, Tensor) for a Tensor param)
//   <name>_backward.out(..., *, Tensor(a!) grad_input[, Tensor(b!) grad_<param>]) -> ...
// Autograd of <name> is C++ (autograd.h); fake kernels and the double backward (autograd of
// <name>_backward) are registered from Python, in fastact/ops.py.
#include <string>

#include <ATen/autocast_mode.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include "autograd.h"
#include "ops.h"

namespace fastact {
namespace {

using at::Tensor;

std::string param_decl(ParamKind kind, const char* name) {
  switch (kind) {
    case ParamKind::None: return "";
    case ParamKind::Scalar: return std::string(", float ") + name;
    case ParamKind::Tensor: return std::string(", Tensor ") + name;
  }
  return "";
}

void define(torch::Library& m, const std::string& schema) { m.def(torch::schema(schema.c_str())); }

void define_schemas(torch::Library& m, const std::string& op, ParamKind kind, const char* param_name) {
  const std::string p = param_decl(kind, param_name);
  define(m, op + "(Tensor x" + p + ") -> Tensor");
  define(m, op + ".out(Tensor x" + p + ", *, Tensor(a!) out) -> Tensor(a!)");
  if (kind == ParamKind::Tensor) {
    const std::string gp = std::string("grad_") + param_name;
    define(m, op + "_backward(Tensor grad, Tensor x" + p + ") -> (Tensor, Tensor)");
    define(m, op + "_backward.out(Tensor grad, Tensor x" + p + ", *, Tensor(a!) grad_input, Tensor(b!) " + gp +
          ") -> (Tensor(a!), Tensor(b!))");
  } else {
    define(m, op + "_backward(Tensor grad, Tensor x" + p + ") -> Tensor");
    define(m, op + "_backward.out(Tensor grad, Tensor x" + p + ", *, Tensor(a!) grad_input) -> Tensor(a!)");
  }
}

// Kernel signatures per kind of parameter; `Info` supplies the OpInfo of one activation.
template <ParamKind K, typename Info>
struct Kernels;

template <typename Info>
struct Kernels<ParamKind::None, Info> {
  static Tensor fwd(const Tensor& x) { return forward(Info::get(), x, {}); }
  static Tensor& fwd_out(const Tensor& x, Tensor& out) { return forward_out(Info::get(), x, {}, out); }
  static Tensor bwd(const Tensor& g, const Tensor& x) { return std::get<0>(backward(Info::get(), g, x, {})); }
  static Tensor& bwd_out(const Tensor& g, const Tensor& x, Tensor& gx) {
    backward_out(Info::get(), g, x, {}, gx, nullptr);
    return gx;
  }
};

template <typename Info>
struct Kernels<ParamKind::Scalar, Info> {
  static ParamArg arg(double p) { return {p, nullptr}; }
  static Tensor fwd(const Tensor& x, double p) { return forward(Info::get(), x, arg(p)); }
  static Tensor& fwd_out(const Tensor& x, double p, Tensor& out) { return forward_out(Info::get(), x, arg(p), out); }
  static Tensor bwd(const Tensor& g, const Tensor& x, double p) {
    return std::get<0>(backward(Info::get(), g, x, arg(p)));
  }
  static Tensor& bwd_out(const Tensor& g, const Tensor& x, double p, Tensor& gx) {
    backward_out(Info::get(), g, x, arg(p), gx, nullptr);
    return gx;
  }
};

template <typename Info>
struct Kernels<ParamKind::Tensor, Info> {
  static ParamArg arg(const Tensor& p) { return {0.0, &p}; }
  static Tensor fwd(const Tensor& x, const Tensor& p) { return forward(Info::get(), x, arg(p)); }
  static Tensor& fwd_out(const Tensor& x, const Tensor& p, Tensor& out) {
    return forward_out(Info::get(), x, arg(p), out);
  }
  static std::tuple<Tensor, Tensor> bwd(const Tensor& g, const Tensor& x, const Tensor& p) {
    return backward(Info::get(), g, x, arg(p));
  }
  static std::tuple<Tensor&, Tensor&> bwd_out(const Tensor& g, const Tensor& x, const Tensor& p, Tensor& gx,
                                              Tensor& gp) {
    backward_out(Info::get(), g, x, arg(p), gx, &gp);
    return {gx, gp};
  }
};

#define FASTACT_IMPL(name, Id, Kind, param)                                   \
  {                                                                           \
    using K = Kernels<ParamKind::Kind, name##_info>;                          \
    m.impl(#name, TORCH_FN(K::fwd));                                          \
    m.impl(#name ".out", TORCH_FN(K::fwd_out));                               \
    m.impl(#name "_backward", TORCH_FN(K::bwd));                              \
    m.impl(#name "_backward.out", TORCH_FN(K::bwd_out));                      \
  }

#define FASTACT_AUTOGRAD_IMPL(name, Id, Kind, param)                                                 \
  m.impl(#name, TORCH_FN((autograd::AutogradEntry<ParamKind::Kind, name##_info>::kernel)));          \
  m.impl(#name ".out", TORCH_FN((autograd::OutAutograd<ParamKind::Kind, name##_info>::forward)));      \
  m.impl(#name "_backward.out", TORCH_FN((autograd::OutAutograd<ParamKind::Kind, name##_info>::backward)));

#define FASTACT_INPLACE_OR_VIEW_IMPL(name, Id, Kind, param)                                                 \
  m.impl(#name ".out", TORCH_FN((autograd::OutInplaceOrView<ParamKind::Kind, name##_info>::forward)));        \
  m.impl(#name "_backward.out", TORCH_FN((autograd::OutInplaceOrView<ParamKind::Kind, name##_info>::backward)));

// Autocast, as torch's own lists have it: prelu is on CPU's lower-precision and CUDA's float16 list (SiLU,
// Mish and LeakyReLU are on neither: they run in the input's dtype). A float32 x is cast to the autocast
// dtype; a float32 weight stays float32, which the kernels take as it is.
template <c10::DeviceType D>
Tensor prelu_autocast(const Tensor& x, const Tensor& weight) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(D));
  static OpSlot<Tensor(const Tensor&, const Tensor&)> prelu_slot;  // fork_safe.h
  const auto& prelu = prelu_slot.get("prelu");
  const auto dtype = at::autocast::get_autocast_dtype(D);
  return prelu.call(at::autocast::cached_cast(dtype, x, D),
                    weight.scalar_type() == at::kFloat ? weight : at::autocast::cached_cast(dtype, weight, D));
}

// Inputs with no kernel here (sparse, quantized and MKL-DNN tensors; devices other than CPU and CUDA; CUDA in a
// build without its kernels) reach this instead of the dispatcher's "Could not run 'fastact::swish' with arguments
// from the 'SparseCPU' backend": the error names the op, the argument and what is expected. It never runs a kernel.
std::string describe_layout(const Tensor& t) {
  if (t.is_quantized()) return std::string("a quantized tensor (") + c10::toString(t.scalar_type()) + ")";
  switch (t.layout()) {
    case at::kSparse: return "layout torch.sparse_coo";
    case at::kSparseCsr: return "layout torch.sparse_csr";
    case at::kSparseCsc: return "layout torch.sparse_csc";
    case at::kSparseBsr: return "layout torch.sparse_bsr";
    case at::kSparseBsc: return "layout torch.sparse_bsc";
    case at::kMkldnn: return "an MKL-DNN tensor (layout torch._mkldnn)";
    default: return "layout " + c10::str(t.layout());
  }
}

// "fastact.<activation>", as the kernels' own errors name the op and its backward.
std::string error_name(const c10::FunctionSchema& schema) {
  const std::string op = schema.name().substr(schema.name().find("::") + 2);
#define FASTACT_BACKWARD_NAME(name, Id, Kind, param) \
  if (op == #name "_backward") return "fastact." #name;
  FASTACT_FOR_EACH_ACTIVATION(FASTACT_BACKWARD_NAME)
#undef FASTACT_BACKWARD_NAME
  return "fastact." + op;
}

void reject_unsupported_input(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const std::string name = error_name(schema);
  const auto& args = schema.arguments();
  const auto inputs = torch::jit::last(*stack, args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    if (!inputs[i].isTensor() || !inputs[i].toTensor().defined()) continue;
    const Tensor& t = inputs[i].toTensor();
    const std::string& arg = args[i].name();
    TORCH_CHECK_NOT_IMPLEMENTED(t.layout() == at::kStrided && !t.is_quantized(), name, ": ", arg,
                                " must be a dense (strided) floating-point tensor, got ", describe_layout(t));
#if defined(FASTACT_WITH_CUDA)
    TORCH_CHECK_NOT_IMPLEMENTED(t.is_cpu() || t.is_cuda(), name, ": ", arg,
                                " must be on a CPU or CUDA device (fastact has kernels for those), got ", t.device());
#else
    TORCH_CHECK_NOT_IMPLEMENTED(!t.is_cuda(), name, ": ", arg, " is on ", t.device(),
                                ", and this build of fastact has no CUDA kernels; rebuild it with "
                                "FASTACT_BUILD=cuda (README, \"Two commands\")");
    TORCH_CHECK_NOT_IMPLEMENTED(t.is_cpu(), name, ": ", arg, " must be on a CPU device, got ", t.device());
#endif
  }
  TORCH_CHECK_NOT_IMPLEMENTED(false, name, ": no kernel for these inputs (", op.operator_name(), ")");
}

void register_rejections(torch::Library& m) {
  const auto reject = [&m](const std::string& op) {
    m.impl(op.c_str(), torch::CppFunction::makeFromBoxedFunction<&reject_unsupported_input>());
  };
#define FASTACT_REJECT(name, Id, Kind, param) \
  for (const char* suffix : {"", ".out", "_backward", "_backward.out"}) reject(std::string(#name) + suffix);
  FASTACT_FOR_EACH_ACTIVATION(FASTACT_REJECT)
#undef FASTACT_REJECT
  reject("leaky_relu_mask_backward");
}

}  // namespace

TORCH_LIBRARY(fastact, m) {
#define FASTACT_DEFINE(name, Id, Kind, param) define_schemas(m, #name, ParamKind::Kind, #param);
  FASTACT_FOR_EACH_ACTIVATION(FASTACT_DEFINE)
#undef FASTACT_DEFINE
  // Which CPU kernel build runs (default, avx2, avx512, avx512_bf16), and a switch used by the tests to compare them.
  m.def("cpu_capability() -> str", [] { return cpu::capability(); });
  m.def("set_cpu_capability(str name) -> str", [](const std::string& name) { return cpu::set_capability(name); });
  m.def("supported_cpu_capabilities() -> str[]", [] { return cpu::supported_capabilities(); });
  // Transparent huge pages for large CPU outputs (csrc/cpu/huge_pages.cpp).
  m.def("cpu_huge_pages() -> bool", [] { return cpu::huge_pages_enabled(); });
  m.def("set_cpu_huge_pages(bool enabled) -> bool", [](bool enabled) { return cpu::set_huge_pages(enabled); });
  m.def("cpu_streaming_threshold() -> int", [] { return cpu::streaming_threshold(); });
  m.def("set_cpu_streaming_threshold(int nbytes) -> int",
        [](int64_t nbytes) { return cpu::set_streaming_threshold(nbytes); });
  m.def("cpu_lookup_threshold() -> int", [] { return cpu::lookup_threshold(); });
  m.def("set_cpu_lookup_threshold(int numel) -> int", [](int64_t numel) { return cpu::set_lookup_threshold(numel); });
  m.def("cpu_lookup_tables_cached() -> int", [] { return cpu::lookup_tables_cached(); });
  m.def("cpu_table_gathers() -> bool", [] { return cpu::table_gathers(); });
  m.def("set_cpu_table_gathers(bool enabled) -> bool", [](bool enabled) { return cpu::set_table_gathers(enabled); });
  // LeakyReLU's backward from the sign mask it saves instead of x (autograd.h, SignMaskNode), and the switch.
  m.def("leaky_relu_mask_backward(Tensor grad, Tensor mask, float negative_slope) -> Tensor");
  m.def("leaky_relu_saves_mask() -> bool", [] { return autograd::sign_mask_enabled().load(); });
  m.def("set_leaky_relu_saves_mask(bool enabled) -> bool",
        [](bool enabled) { return autograd::sign_mask_enabled().exchange(enabled); });
  m.def("has_cuda_kernels() -> bool", [] {
#if defined(FASTACT_WITH_CUDA)
    return true;
#else
    return false;
#endif
  });
}

TORCH_LIBRARY_IMPL(fastact, CPU, m) {
  FASTACT_FOR_EACH_ACTIVATION(FASTACT_IMPL)
  m.impl("leaky_relu_mask_backward", TORCH_FN(leaky_relu_mask_backward));
}

TORCH_LIBRARY_IMPL(fastact, Autograd, m) {
  FASTACT_FOR_EACH_ACTIVATION(FASTACT_AUTOGRAD_IMPL)
  m.impl("leaky_relu_mask_backward", TORCH_FN(autograd::mask_backward_kernel));
}

TORCH_LIBRARY_IMPL(fastact, ADInplaceOrView, m) { FASTACT_FOR_EACH_ACTIVATION(FASTACT_INPLACE_OR_VIEW_IMPL) }

TORCH_LIBRARY_IMPL(fastact, AutocastCPU, m) { m.impl("prelu", TORCH_FN(prelu_autocast<c10::DeviceType::CPU>)); }
TORCH_LIBRARY_IMPL(fastact, AutocastCUDA, m) { m.impl("prelu", TORCH_FN(prelu_autocast<c10::DeviceType::CUDA>)); }

#if defined(FASTACT_WITH_CUDA)
TORCH_LIBRARY_IMPL(fastact, CUDA, m) { FASTACT_FOR_EACH_ACTIVATION(FASTACT_IMPL) }
#else
TORCH_LIBRARY_IMPL(fastact, CUDA, m) { register_rejections(m); }
#endif
TORCH_LIBRARY_IMPL(fastact, SparseCPU, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, SparseCUDA, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, SparseCsrCPU, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, SparseCsrCUDA, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, QuantizedCPU, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, QuantizedCUDA, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, MkldnnCPU, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, MPS, m) { register_rejections(m); }
TORCH_LIBRARY_IMPL(fastact, XPU, m) { register_rejections(m); }

}  // namespace fastact
