// What the device-independent op layer (ops.cpp) hands to a device's kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace fastact {

// Every activation, once: (op name, functor (activations.h: <name>Op), kind of parameter, parameter name).
// Kinds: None (mish), Scalar (a float fixed at the call) and Tensor (learnable: one element or one per
// channel, with its gradient reduced in the kernel). Adding an activation: a functor in activations.h, a line
// here, and the other steps listed in README.md ("Layout").
#define FASTACT_FOR_EACH_ACTIVATION(_)        \
  _(swish, Swish, Scalar, beta)               \
  _(swish_param, Swish, Tensor, beta)         \
  _(mish, Mish, None, none)                   \
  _(leaky_relu, Leaky, Scalar, negative_slope) \
  _(prelu, Leaky, Tensor, weight)

// The math functors (activations.h: <name>Op); the device code switches on ActivationId.
#define FASTACT_FOR_EACH_FUNCTOR(_) _(Swish) _(Mish) _(Leaky)

enum class ActivationId : int {
#define FASTACT_ENUM(F) F,
  FASTACT_FOR_EACH_FUNCTOR(FASTACT_ENUM)
#undef FASTACT_ENUM
};

// A dense tensor in memory order, seen as [outer, channels, inner]: the element at memory offset i belongs
// to channel (i / inner) % channels. This holds for any non-overlapping dense layout (contiguous,
// channels_last, permuted), with inner = the channel dimension's stride. Without a per-channel parameter,
// channels = 1 and inner = numel.
struct ElementwiseProblem {
  ActivationId activation;
  c10::ScalarType dtype;  // of x, grad, out, grad_input
  int64_t numel;
  int64_t channels;
  int64_t inner;
  const void* x;
  const void* grad;    // backward only
  void* out;           // forward: y; backward: grad_input
  // Parameter in the compute type (float, or double for double inputs): `param` points to `channels`
  // values on the tensor's device, or is null and `param_scalar` holds the single value.
  const void* param;
  double param_scalar;
  // Backward of a Tensor parameter: `channels` values of d(loss)/d(param) in the compute type, written
  // (not accumulated) by the kernel, in a fixed order so that every run gives the same bits.
  void* param_grad;
  // CPU: write `out` with non-temporal stores (set by cpu::forward/backward for data larger than the cache).
  bool stream_out;
  // CPU: no parameter value is zero (set by cpu::forward and cpu::backward), so an op's cheaper form for that
  // case applies (LeakyOp::NonzeroParam, SwishOp::NonzeroParam).
  bool params_nonzero;
  // CPU: every parameter value is at most 1 (none is NaN), set by cpu::forward (LeakyOp::UnitParam).
  bool params_at_most_one;
  // CPU, AVX-512 lookup tables: read with gathers, or with scalar loads where gathers are slow (cpu/kernels.h).
  bool table_gathers = true;
};

// Whether a scalar parameter (param == nullptr) is nonzero as the kernels see it, in the compute type: a double
// like 1e-46 is a float zero.
inline bool scalar_param_nonzero(const ElementwiseProblem& p) {
  return p.dtype == c10::ScalarType::Double ? p.param_scalar != 0 : static_cast<float>(p.param_scalar) != 0;
}

// The op layer (ops.cpp): argument checks, layout, allocation; one implementation for every device.
enum class ParamKind { None, Scalar, Tensor };

struct OpInfo {
  const char* name;        // as in the schema, for error messages: "fastact.<name>: ..."
  ActivationId activation;
  ParamKind kind;
  const char* param_name;  // "beta", "weight", ...
};

// Each activation's OpInfo as a type, <name>_info::get(), for the templates that generate its kernels and entry
// points (registration.cpp, python_module.cpp).
#define FASTACT_INFO(name, Id, Kind, param)                                       \
  struct name##_info {                                                            \
    static const OpInfo& get() {                                                  \
      static const OpInfo info{#name, ActivationId::Id, ParamKind::Kind, #param}; \
      return info;                                                                \
    }                                                                             \
  };
FASTACT_FOR_EACH_ACTIVATION(FASTACT_INFO)
#undef FASTACT_INFO

// The parameter argument of one call: nothing, a float, or a tensor.
struct ParamArg {
  double scalar = 0.0;
  const at::Tensor* tensor = nullptr;
};

at::Tensor forward(const OpInfo& op, const at::Tensor& x, const ParamArg& param);
at::Tensor& forward_out(const OpInfo& op, const at::Tensor& x, const ParamArg& param, at::Tensor& out);
// Returns (grad_input, grad_param); grad_param is undefined unless op.kind is Tensor.
std::tuple<at::Tensor, at::Tensor> backward(const OpInfo& op, const at::Tensor& grad, const at::Tensor& x,
                                            const ParamArg& param);
void backward_out(const OpInfo& op, const at::Tensor& grad, const at::Tensor& x, const ParamArg& param,
                  at::Tensor& grad_input, at::Tensor* grad_param);

// LeakyReLU with the sign mask autograd saves instead of x (autograd.h, SignMaskNode), for a contiguous CPU x:
// (y, mask), mask a uint8 tensor of (numel + 7) / 8 bytes, bit i % 8 of byte i / 8 being x.flatten()[i] > 0.
std::tuple<at::Tensor, at::Tensor> leaky_relu_with_sign_mask(const at::Tensor& x, double negative_slope);
bool sign_mask_supported(const at::Tensor& x);
// fastact::leaky_relu_mask_backward: grad where the mask's bit is set, else grad * negative_slope (contiguous).
at::Tensor leaky_relu_mask_backward(const at::Tensor& grad, const at::Tensor& mask, double negative_slope);

namespace cpu {
void forward(const ElementwiseProblem& p);
void backward(const ElementwiseProblem& p);
std::string capability();                             // the kernel build: default, avx2, avx512 or avx512_bf16
std::string set_capability(const std::string& name);  // returns the previous one
std::vector<std::string> supported_capabilities();    // the builds this CPU can run
// Transparent huge pages for large fresh outputs (cpu/huge_pages.cpp).
void advise_huge_pages(void* data, std::size_t nbytes);
bool huge_pages_enabled();
bool set_huge_pages(bool enabled);  // returns the previous setting
// Calls that touch more bytes than this (default: the last-level cache) write their output with non-temporal
// stores. For tuning and for the tests, which force them on small tensors.
int64_t streaming_threshold();
int64_t set_streaming_threshold(int64_t nbytes);  // returns the previous one
// Lookup tables for 16-bit forwards and backwards (without a parameter gradient) of at least this many
// elements (cpu/dispatch.cpp).
int64_t lookup_threshold();
int64_t set_lookup_threshold(int64_t numel);  // returns the previous one
int64_t lookup_tables_cached();
// Whether the AVX-512 builds read the tables with gathers (else scalar loads): timed both ways on first use
// (cpu/kernels.h); the bits are the same. The setter, for the tests, returns the previous setting.
bool table_gathers();
bool set_table_gathers(bool enabled);
// LeakyReLU (p.param_scalar the slope) on a contiguous x that also writes x's sign mask, (numel + 7) / 8 bytes:
// bit i % 8 of mask[i / 8] is x[i] > 0. And its backward from that mask (p.x unused).
void forward_with_sign_mask(const ElementwiseProblem& p, uint8_t* mask);
void backward_from_sign_mask(const ElementwiseProblem& p, const uint8_t* mask);
}  // namespace cpu

namespace cuda {
void forward(const ElementwiseProblem& p);
void backward(const ElementwiseProblem& p);
}  // namespace cuda

}  // namespace fastact
