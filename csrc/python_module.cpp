// fastact._C: the Python module whose import loads this library (running the registrations in
// registration.cpp), one eager entry point per forward op, and the in-place forms (<name>_).
//
// Why: torch.ops.fastact.<op>(...) matches its arguments to the schema in generic code, which costs ~2.5 us a
// call, about twice torch's whole F.silu on a small tensor. These entry points take what an eager call
// usually passes (a plain tensor, a Python float or int, a plain parameter tensor) and call the same
// dispatcher op, so autograd, autocast, vmap and dispatch modes behave as through torch.ops. Anything else (a
// tensor subclass, a torch function mode, a torch.jit trace, other argument types) gets NotImplemented back,
// and fastact/functional.py then takes the torch.ops path, with its checks and messages.
#include <Python.h>

#include <cctype>
#include <string>
#include <typeinfo>

#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_cpp_function.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/utils/pybind.h>

#include "autograd.h"
#include "ops.h"

namespace fastact {
namespace {

using at::Tensor;

bool plain_tensor(PyObject* obj) { return THPVariable_CheckExact(obj); }  // Tensor or Parameter, no subclass
bool plain_number(PyObject* obj) { return PyFloat_CheckExact(obj) || PyLong_CheckExact(obj); }  // (no bool)

// Calls that torch.ops must see: __torch_function__ modes, and torch.jit.trace.
bool fast_path_open() { return !at::impl::torch_function_mode_enabled() && !torch::jit::tracer::isTracing(); }

// The GIL released for a scope, as torch's own bindings release it around an op, so that other Python threads
// run meanwhile (what the op calls back into Python, a dispatch mode or a Python kernel, takes it again).
class GilReleased {
 public:
  GilReleased() : saved_(PyEval_SaveThread()) {}
  ~GilReleased() { PyEval_RestoreThread(saved_); }
  GilReleased(const GilReleased&) = delete;
  GilReleased& operator=(const GilReleased&) = delete;

 private:
  PyThreadState* saved_;
};

template <typename Call>
PyObject* run_without_gil(Call&& call) {
  Tensor result;
  {
    GilReleased released;
    result = call();
  }
  return THPVariable_Wrap(std::move(result));
}

template <ParamKind K>
struct EagerCall;

template <>
struct EagerCall<ParamKind::None> {
  using Signature = Tensor(const Tensor&);
  static PyObject* call(const c10::TypedOperatorHandle<Signature>& op, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 1 || !plain_tensor(args[0]) || !fast_path_open()) Py_RETURN_NOTIMPLEMENTED;
    HANDLE_TH_ERRORS
    const Tensor& x = THPVariable_Unpack(args[0]);
    return run_without_gil([&] { return op.call(x); });
    END_HANDLE_TH_ERRORS
  }
};

template <>
struct EagerCall<ParamKind::Scalar> {
  using Signature = Tensor(const Tensor&, double);
  static PyObject* call(const c10::TypedOperatorHandle<Signature>& op, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 2 || !plain_tensor(args[0]) || !plain_number(args[1]) || !fast_path_open()) {
      Py_RETURN_NOTIMPLEMENTED;
    }
    HANDLE_TH_ERRORS
    const double param = PyFloat_AsDouble(args[1]);
    if (param == -1.0 && PyErr_Occurred()) {  // an int too large for a double: the Python path names the op
      PyErr_Clear();
      Py_RETURN_NOTIMPLEMENTED;
    }
    const Tensor& x = THPVariable_Unpack(args[0]);
    return run_without_gil([&] { return op.call(x, param); });
    END_HANDLE_TH_ERRORS
  }
};

template <>
struct EagerCall<ParamKind::Tensor> {
  using Signature = Tensor(const Tensor&, const Tensor&);
  static PyObject* call(const c10::TypedOperatorHandle<Signature>& op, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != 2 || !plain_tensor(args[0]) || !plain_tensor(args[1]) || !fast_path_open()) {
      Py_RETURN_NOTIMPLEMENTED;
    }
    HANDLE_TH_ERRORS
    const Tensor& x = THPVariable_Unpack(args[0]);
    const Tensor& param = THPVariable_Unpack(args[1]);
    return run_without_gil([&] { return op.call(x, param); });
    END_HANDLE_TH_ERRORS
  }
};

#define FASTACT_EAGER_ENTRY(name, Id, Kind, param)                                                      \
  PyObject* eager_##name(PyObject*, PyObject* const* args, Py_ssize_t nargs) {                          \
    static OpSlot<EagerCall<ParamKind::Kind>::Signature> op; /* fork_safe.h */                           \
    return EagerCall<ParamKind::Kind>::call(op.get(#name), args, nargs);                               \
  }
FASTACT_FOR_EACH_ACTIVATION(FASTACT_EAGER_ENTRY)
#undef FASTACT_EAGER_ENTRY

// The in-place forms (torch has silu_, mish_ and leaky_relu_): x is written and returned, recorded under autograd
// by autograd::InplaceKernel. NotImplemented also where x carries a forward-mode tangent or autograd is off
// below the dispatcher.
template <ParamKind K, typename Info>
PyObject* eager_inplace(PyObject* const* args, Py_ssize_t nargs) {
  constexpr Py_ssize_t kArgs = K == ParamKind::None ? 1 : 2;
  if (nargs != kArgs || !plain_tensor(args[0]) || (kArgs == 2 && !plain_number(args[1])) || !fast_path_open()) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  HANDLE_TH_ERRORS
  const double param = kArgs == 2 ? PyFloat_AsDouble(args[1]) : 0.0;
  if (param == -1.0 && PyErr_Occurred()) {  // as in EagerCall<ParamKind::Scalar>
    PyErr_Clear();
    Py_RETURN_NOTIMPLEMENTED;
  }
  const Tensor& x = THPVariable_Unpack(args[0]);
  // InplaceKernel is autograd's layer, entered directly: where the dispatcher would skip autograd (inference
  // mode, autograd keys excluded, as inside a kernel below autograd), the dispatcher path must take the call.
  // A view that needs a graph takes the Python path too: its CopySlices node would wrap ours, and compiled
  // autograd feeds a wrapped node placeholder gradients that only its own generated nodes can take.
  if (autograd::has_tangent(x) || c10::InferenceMode::is_enabled() ||
      c10::impl::tls_local_dispatch_key_set().excluded_.has_any(c10::autograd_dispatch_keyset) ||
      (x.is_view() && x.requires_grad() && at::GradMode::is_enabled())) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  {
    GilReleased released;
    autograd::InplaceKernel<K, Info>::call(x, {Tensor(), param});
  }
  Py_INCREF(args[0]);  // the same Python object, as torch's in-place ops return
  return args[0];
  END_HANDLE_TH_ERRORS
}

#define FASTACT_EAGER_INPLACE_ENTRY(name, Kind)                                   \
  PyObject* eager_##name##_(PyObject*, PyObject* const* args, Py_ssize_t nargs) { \
    return eager_inplace<ParamKind::Kind, name##_info>(args, nargs);              \
  }
FASTACT_EAGER_INPLACE_ENTRY(swish, Scalar)
FASTACT_EAGER_INPLACE_ENTRY(mish, None)
FASTACT_EAGER_INPLACE_ENTRY(leaky_relu, Scalar)
#undef FASTACT_EAGER_INPLACE_ENTRY

#define FASTACT_METHOD(name, Id, Kind, param)                                                          \
  {#name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(eager_##name)), METH_FASTCALL,      \
   "torch.ops.fastact." #name " for plain eager calls; NotImplemented where torch.ops must take the call"},
#define FASTACT_INPLACE_METHOD(name)                                                                      \
  {#name "_", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(eager_##name##_)), METH_FASTCALL,    \
   "fastact's in-place " #name " for plain eager calls; NotImplemented where the Python path must take the call"},
// clang-format off
PyMethodDef methods[] = {
    FASTACT_FOR_EACH_ACTIVATION(FASTACT_METHOD)
    FASTACT_INPLACE_METHOD(swish)
    FASTACT_INPLACE_METHOD(mish)
    FASTACT_INPLACE_METHOD(leaky_relu)
    {nullptr, nullptr, 0, nullptr},
};
// clang-format on
#undef FASTACT_INPLACE_METHOD
#undef FASTACT_METHOD

// The Python types of the graph nodes: y.grad_fn of a fastact call is a FastactSwishBackward (FastactMishBackward,
// ...), where an unregistered node would be torch's generic CppFunction, as torch's own are SiluBackward0 and so
// on; graph printers (torchviz) label nodes with this name. Like torch's, each has its saved values as properties:
// _saved_x (the input, or the output that an in-place call saved instead) and _saved_<parameter>, and
// _raw_saved_x, the SavedTensor whose register_hooks sets saved-tensor hooks on that one value.
// Makes `type` the Python type of the C++ node type `node` (y.grad_fn's type), named `name` in the module.
bool add_node_type(PyObject* module, PyTypeObject& type, const char* name, PyGetSetDef* properties,
                   const std::type_info& node) {
  torch::autograd::_initFunctionPyTypeObject(type, name, properties, nullptr);
  Py_INCREF(&type);
  if (PyModule_AddObject(module, name, reinterpret_cast<PyObject*>(&type)) < 0) {
    Py_DECREF(&type);
    return false;
  }
  torch::autograd::registerCppFunction(node, &type);
  return true;
}

template <ParamKind K, typename Info>
struct NodeType {
  using Node = autograd::ActivationNode<K, Info>;
  static torch::autograd::THPCppFunction& wrapper(PyObject* self) {
    return *reinterpret_cast<torch::autograd::THPCppFunction*>(self);
  }
  static Node& node(PyObject* self) { return *static_cast<Node*>(wrapper(self).cdata.get()); }

  static PyObject* saved_x(PyObject* self, void*) {
    HANDLE_TH_ERRORS
    return THPVariable_Wrap(node(self).x.unpack(wrapper(self).cdata));  // (the node: x may be its own output)
    END_HANDLE_TH_ERRORS
  }
  static PyObject* raw_saved_x(PyObject* self, void*) {
    HANDLE_TH_ERRORS
    return pybind11::cast(node(self).x, pybind11::return_value_policy::reference).release().ptr();
    END_HANDLE_TH_ERRORS
  }
  static PyObject* saved_param(PyObject* self, void*) {
    HANDLE_TH_ERRORS
    if constexpr (K == ParamKind::Tensor) {
      return THPVariable_Wrap(node(self).param_tensor.unpack(wrapper(self).cdata));
    } else {
      return PyFloat_FromDouble(node(self).param_scalar);
    }
    END_HANDLE_TH_ERRORS
  }

  // "swish_param" -> "FastactSwishParamBackward"
  static std::string type_name() {
    std::string name = "Fastact";
    bool word_start = true;
    for (const char* c = Info::get().name; *c != '\0'; ++c) {
      if (*c == '_') {
        word_start = true;
        continue;
      }
      name += word_start ? static_cast<char>(std::toupper(static_cast<unsigned char>(*c))) : *c;
      word_start = false;
    }
    return name + "Backward";
  }

  static bool add_to(PyObject* module) {
    static const std::string name = type_name();
    static const std::string param_property = std::string("_saved_") + Info::get().param_name;
    using namespace torch::autograd;  // NOLINT: the macro names torch's default getters unqualified
    static PyGetSetDef properties[] = {
        THP_FUNCTION_DEFAULT_PROPERTIES,
        {"_saved_x", saved_x, nullptr, nullptr, nullptr},
        {"_raw_saved_x", raw_saved_x, nullptr, nullptr, nullptr},
        {K == ParamKind::None ? nullptr : param_property.c_str(), saved_param, nullptr, nullptr, nullptr},
        {nullptr, nullptr, nullptr, nullptr, nullptr},  // (the end, or already the end without a parameter)
    };
    static PyTypeObject type{};
    return add_node_type(module, type, name.c_str(), properties, typeid(Node));
  }
};

// LeakyReLU's node where it saves x's sign mask instead of x (autograd.h): FastactLeakyReluMaskBackward, with
// _saved_mask (uint8, one bit per element of x), _raw_saved_mask and _saved_negative_slope.
struct SignMaskNodeType {
  using Node = autograd::SignMaskNode;
  static Node& node(PyObject* self) {
    return *static_cast<Node*>(reinterpret_cast<torch::autograd::THPCppFunction*>(self)->cdata.get());
  }
  static PyObject* saved_mask(PyObject* self, void*) {
    HANDLE_TH_ERRORS
    return THPVariable_Wrap(node(self).mask.unpack());
    END_HANDLE_TH_ERRORS
  }
  static PyObject* raw_saved_mask(PyObject* self, void*) {
    HANDLE_TH_ERRORS
    return pybind11::cast(node(self).mask, pybind11::return_value_policy::reference).release().ptr();
    END_HANDLE_TH_ERRORS
  }
  static PyObject* saved_slope(PyObject* self, void*) {
    HANDLE_TH_ERRORS
    return PyFloat_FromDouble(node(self).negative_slope);
    END_HANDLE_TH_ERRORS
  }
  static bool add_to(PyObject* module) {
    static const char* name = "FastactLeakyReluMaskBackward";
    using namespace torch::autograd;  // NOLINT: as in NodeType
    static PyGetSetDef properties[] = {
        THP_FUNCTION_DEFAULT_PROPERTIES,
        {"_saved_mask", saved_mask, nullptr, nullptr, nullptr},
        {"_raw_saved_mask", raw_saved_mask, nullptr, nullptr, nullptr},
        {"_saved_negative_slope", saved_slope, nullptr, nullptr, nullptr},
        {nullptr, nullptr, nullptr, nullptr, nullptr},
    };
    static PyTypeObject type{};
    return add_node_type(module, type, name, properties, typeid(Node));
  }
};

bool add_node_types(PyObject* module) {
  bool ok = SignMaskNodeType::add_to(module);
#define FASTACT_NODE_TYPE(name, Id, Kind, param) ok = ok && NodeType<ParamKind::Kind, name##_info>::add_to(module);
  FASTACT_FOR_EACH_ACTIVATION(FASTACT_NODE_TYPE)
#undef FASTACT_NODE_TYPE
  return ok;
}

}  // namespace
}  // namespace fastact

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, fastact::methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  try {
    if (!fastact::add_node_types(module)) {
      Py_DECREF(module);
      return nullptr;
    }
  } catch (const std::exception& e) {  // _initFunctionPyTypeObject throws where PyType_Ready fails
    PyErr_SetString(PyExc_ImportError, e.what());
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
