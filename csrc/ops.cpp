// The op layer shared by every device: checks the arguments (errors name the op and the argument), brings
// the input to a dense layout the kernels walk in memory order, allocates outputs with the input's layout,
// and hands an ElementwiseProblem to the device's kernels.
#include "ops.h"

#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/DeviceGuard.h>

namespace fastact {
namespace {

bool is_supported_dtype(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

c10::ScalarType compute_dtype(c10::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_tensor(const OpInfo& op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), "fastact.", op.name, ": ", arg, " must be a tensor, got None");
  TORCH_CHECK(t.layout() == at::kStrided, "fastact.", op.name, ": ", arg,
              " must be a dense (strided) tensor, got layout ", t.layout());
  TORCH_CHECK(is_supported_dtype(t.scalar_type()), "fastact.", op.name, ": ", arg,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu() || t.device().is_cuda(), "fastact.", op.name, ": ", arg,
              " must be on a CPU or CUDA device, got ", t.device());
}

void check_like(const OpInfo& op, const char* arg, const at::Tensor& t, const at::Tensor& x) {
  check_tensor(op, arg, t);
  TORCH_CHECK(t.sizes() == x.sizes(), "fastact.", op.name, ": ", arg, " must have the shape of x ", x.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fastact.", op.name, ": ", arg, " must have the dtype of x (",
              x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "fastact.", op.name, ": ", arg, " must be on the device of x (",
              x.device(), "), got ", t.device());
}

// The number of channels the parameter is spread over (1 for a one-element parameter).
int64_t check_param(const OpInfo& op, const at::Tensor& x, const at::Tensor& param) {
  const char* name = op.param_name;
  TORCH_CHECK(param.defined(), "fastact.", op.name, ": ", name, " must be a tensor, got None");
  TORCH_CHECK(param.layout() == at::kStrided, "fastact.", op.name, ": ", name,
              " must be a dense (strided) tensor, got layout ", param.layout());
  TORCH_CHECK(param.scalar_type() == x.scalar_type() ||
                  (param.scalar_type() == at::kFloat && compute_dtype(x.scalar_type()) == at::kFloat),
              "fastact.", op.name, ": ", name, " must have the dtype of x (", x.scalar_type(),
              ") or float32 when x is float16/bfloat16, got ", param.scalar_type());
  TORCH_CHECK(param.device() == x.device(), "fastact.", op.name, ": ", name, " must be on the device of x (",
              x.device(), "), got ", param.device());
  TORCH_CHECK(param.dim() <= 1, "fastact.", op.name, ": ", name,
              " must be 0-d or 1-d (one element, or one per channel), got shape ", param.sizes());
  if (param.numel() == 1) return 1;
  TORCH_CHECK(x.dim() >= 2, "fastact.", op.name, ": a per-channel ", name, " (", param.numel(),
              " elements) needs x with a channel dimension (dim 1), got x of shape ", x.sizes());
  TORCH_CHECK(param.numel() == x.size(1), "fastact.", op.name, ": ", name,
              " must have 1 element or one per channel (x.size(1) = ", x.size(1), "), got shape ", param.sizes());
  return param.numel();
}

// A layout the kernels can walk in memory order: the input itself if it is dense, else a copy in the layout
// that empty_like(x) gives, which keeps x's order of strides (so outputs match the fake kernels' empty_like and
// torch's own ops; contiguous(suggest_memory_format()) would not for a permuted slice such as x.t()[:, ::2]).
at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t);
}

// A fresh output with x's layout. On the CPU a large one is backed by huge pages where the system allows it
// (cpu/huge_pages.cpp): it is written right after, and with 4 KB pages the page faults of that first write
// cost more than the kernel.
at::Tensor empty_output_like(const at::Tensor& x) {
  at::Tensor out = at::empty_like(x);
  if (out.is_cpu()) cpu::advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

struct Prepared {
  at::Tensor x;      // dense
  at::Tensor param;  // compute dtype, contiguous, or undefined for a scalar/no parameter
  ElementwiseProblem problem;
};

Prepared prepare(const OpInfo& op, const at::Tensor& x, const ParamArg& param) {
  check_tensor(op, "x", x);
  Prepared p;
  p.x = dense(x);
  int64_t channels = 1;
  if (op.kind == ParamKind::Tensor) {
    channels = check_param(op, x, *param.tensor);
    p.param = param.tensor->to(compute_dtype(x.scalar_type())).contiguous();
  }
  auto& pr = p.problem;
  pr.activation = op.activation;
  pr.dtype = x.scalar_type();
  pr.numel = x.numel();
  pr.channels = channels;
  // Any dense layout: element at memory offset i is in channel (i / stride(1)) % size(1).
  pr.inner = channels == 1 ? std::max<int64_t>(x.numel(), 1) : p.x.stride(1);
  pr.x = p.x.data_ptr();
  pr.grad = nullptr;
  pr.out = nullptr;
  pr.param = p.param.defined() ? p.param.data_ptr() : nullptr;
  pr.param_scalar = op.kind == ParamKind::Scalar ? param.scalar : 0.0;
  // As torch's scalar arguments: a finite value that float cannot hold is an error, not an infinity.
  TORCH_CHECK(op.kind != ParamKind::Scalar || compute_dtype(x.scalar_type()) != at::kFloat ||
                  !std::isfinite(param.scalar) || std::abs(param.scalar) <= std::numeric_limits<float>::max(),
              "fastact.", op.name, ": ", op.param_name, " = ", param.scalar, " cannot be converted to float (the compute ",
              "type of ", x.scalar_type(), " x) without overflow");
  pr.param_grad = nullptr;
  pr.stream_out = false;
  pr.params_nonzero = false;
  pr.params_at_most_one = false;
  return p;
}

// Runs the forward or backward kernels of x's device.
void launch(const at::Tensor& x, const ElementwiseProblem& problem, bool backward) {
  if (problem.numel == 0) return;
  c10::DeviceGuard guard(x.device());
  if (x.is_cuda()) {
#if defined(FASTACT_WITH_CUDA)
    backward ? cuda::backward(problem) : cuda::forward(problem);
#else
    TORCH_CHECK(false, "fastact was built without CUDA kernels; rebuild with FASTACT_BUILD=cuda");
#endif
  } else {
    backward ? cpu::backward(problem) : cpu::forward(problem);
  }
}

// A tensor the op writes must not overlap itself (an expanded tensor) nor partly overlap an input: the kernels
// read each element just before writing the same element, so only an exact alias of an input is safe.
void check_writable(const OpInfo& op, const char* arg, const at::Tensor& out,
                    std::initializer_list<std::pair<const char*, const at::Tensor*>> inputs) {
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes, "fastact.", op.name, ": ", arg,
              " has elements that share memory (an expanded tensor?), so it cannot be written");
  for (const auto& [name, in] : inputs) {
    TORCH_CHECK(at::get_overlap_status(out, *in) != at::MemOverlapStatus::Partial, "fastact.", op.name, ": ", arg,
                " partly overlaps ", name, " in memory; pass ", name, " itself (to write in place) or a separate tensor");
  }
}

// Two outputs of one call must not share any memory: each is written without regard to the other. (For an
// exact alias get_overlap_status says Full, and TooHard where either is not dense: then the byte ranges decide.)
void check_separate_outputs(const OpInfo& op, const std::string& arg, const at::Tensor& out, const char* other_name,
                            const at::Tensor& other) {
  if (out.numel() == 0 || other.numel() == 0) return;
  const auto status = at::get_overlap_status(out, other);
  bool shared = status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial;
  if (status == at::MemOverlapStatus::TooHard) {
    auto bytes = [](const at::Tensor& t) {
      int64_t last = 0;  // the offset of the last element (torch's strides are never negative)
      for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
      const char* begin = static_cast<const char*>(t.data_ptr());
      return std::make_pair(begin, begin + (last + 1) * t.element_size());
    };
    const auto [a0, a1] = bytes(out);
    const auto [b0, b1] = bytes(other);
    shared = a0 < b1 && b0 < a1;
  }
  TORCH_CHECK(!shared, "fastact.", op.name, ": ", arg, " shares memory with ", other_name,
              "; the two outputs must be separate tensors");
}

}  // namespace

at::Tensor forward(const OpInfo& op, const at::Tensor& x, const ParamArg& param) {
  Prepared p = prepare(op, x, param);
  at::Tensor out = empty_output_like(p.x);
  p.problem.out = out.data_ptr();
  launch(p.x, p.problem, /*backward=*/false);
  return out;
}

at::Tensor& forward_out(const OpInfo& op, const at::Tensor& x, const ParamArg& param, at::Tensor& out) {
  Prepared p = prepare(op, x, param);
  const char* out_name = out.is_same(x) ? "x (written in place)" : "out";  // in place: out=x
  check_like(op, out_name, out, x);
  if (op.kind == ParamKind::Tensor) {  // a float32 parameter is read in place, while out is written
    check_writable(op, out_name, out, {{"x", &x}, {op.param_name, param.tensor}});
  } else {
    check_writable(op, out_name, out, {{"x", &x}});
  }
  if (out.strides() == p.x.strides()) {
    // Same layout (out may even be x: each element is read before it is written).
    p.problem.out = out.data_ptr();
    launch(p.x, p.problem, /*backward=*/false);
  } else {
    at::Tensor tmp = empty_output_like(p.x);
    p.problem.out = tmp.data_ptr();
    launch(p.x, p.problem, /*backward=*/false);
    out.copy_(tmp);
  }
  return out;
}

void backward_out(const OpInfo& op, const at::Tensor& grad, const at::Tensor& x, const ParamArg& param,
                  at::Tensor& grad_input, at::Tensor* grad_param) {
  Prepared p = prepare(op, x, param);
  check_like(op, "grad", grad, x);
  check_like(op, "grad_input", grad_input, x);
  if (op.kind == ParamKind::Tensor) {
    check_writable(op, "grad_input", grad_input, {{"grad", &grad}, {"x", &x}, {op.param_name, param.tensor}});
  } else {
    check_writable(op, "grad_input", grad_input, {{"grad", &grad}, {"x", &x}});
  }
  // grad must be walked in the same memory order as x.
  const at::Tensor g = grad.strides() == p.x.strides() ? grad : empty_output_like(p.x).copy_(grad);
  const bool direct = grad_input.strides() == p.x.strides() && !grad_input.is_same(p.x);
  at::Tensor gx = direct ? grad_input : empty_output_like(p.x);
  at::Tensor param_grad;
  if (op.kind == ParamKind::Tensor) {
    const at::Tensor& w = *param.tensor;
    TORCH_CHECK(grad_param != nullptr && grad_param->defined(), "fastact.", op.name, ": grad_", op.param_name,
                " must be a tensor");
    TORCH_CHECK(grad_param->sizes() == w.sizes() && grad_param->scalar_type() == w.scalar_type() &&
                    grad_param->device() == w.device(),
                "fastact.", op.name, ": grad_", op.param_name, " must have the shape, dtype and device of ",
                op.param_name, " (", w.sizes(), ", ", w.scalar_type(), ", ", w.device(), "), got (",
                grad_param->sizes(), ", ", grad_param->scalar_type(), ", ", grad_param->device(), ")");
    const std::string grad_param_name = std::string("grad_") + op.param_name;
    check_writable(op, grad_param_name.c_str(), *grad_param, {{"grad", &grad}, {"x", &x}, {op.param_name, &w}});
    check_separate_outputs(op, grad_param_name, *grad_param, "grad_input", grad_input);
    // The kernels write (not accumulate) the gradient: straight into grad_param when it has the layout and
    // dtype they write, else into a temporary that is copied over.
    const bool direct_param = grad_param->is_contiguous() && grad_param->scalar_type() == p.param.scalar_type();
    param_grad = direct_param ? *grad_param : at::empty({p.problem.channels}, p.param.options());
    if (p.problem.numel == 0) param_grad.zero_();  // no kernel runs
    p.problem.param_grad = param_grad.data_ptr();
  }
  p.problem.grad = g.data_ptr();
  p.problem.out = gx.data_ptr();
  launch(p.x, p.problem, /*backward=*/true);
  if (!direct) grad_input.copy_(gx);
  if (param_grad.defined() && !param_grad.is_same(*grad_param)) {
    grad_param->copy_(param_grad.reshape(grad_param->sizes()));
  }
}

std::tuple<at::Tensor, at::Tensor> backward(const OpInfo& op, const at::Tensor& grad, const at::Tensor& x,
                                            const ParamArg& param) {
  check_tensor(op, "x", x);
  at::Tensor grad_input = empty_output_like(x);  // the layout of dense(x), as the fake kernel gives
  at::Tensor grad_param;
  if (op.kind == ParamKind::Tensor) {
    TORCH_CHECK(param.tensor != nullptr && param.tensor->defined(), "fastact.", op.name, ": ", op.param_name,
                " must be a tensor, got None");
    grad_param = at::empty_like(*param.tensor, at::MemoryFormat::Contiguous);
  }
  backward_out(op, grad, x, param, grad_input, op.kind == ParamKind::Tensor ? &grad_param : nullptr);
  return {grad_input, grad_param};
}

bool sign_mask_supported(const at::Tensor& x) {
  return x.layout() == at::kStrided && x.device().is_cpu() && is_supported_dtype(x.scalar_type()) &&
         x.is_contiguous() && x.numel() > 0;
}

std::tuple<at::Tensor, at::Tensor> leaky_relu_with_sign_mask(const at::Tensor& x, double negative_slope) {
  Prepared p = prepare(leaky_relu_info::get(), x, {negative_slope, nullptr});
  TORCH_CHECK(sign_mask_supported(x), "fastact.leaky_relu: the sign mask is kept for contiguous CPU tensors only");
  at::Tensor out = empty_output_like(p.x);  // contiguous, as x
  at::Tensor mask = at::empty({(x.numel() + 7) / 8}, x.options().dtype(at::kByte));
  p.problem.out = out.data_ptr();
  cpu::forward_with_sign_mask(p.problem, mask.data_ptr<uint8_t>());
  return {out, mask};
}

at::Tensor leaky_relu_mask_backward(const at::Tensor& grad, const at::Tensor& mask, double negative_slope) {
  static const OpInfo op{"leaky_relu_mask_backward", ActivationId::Leaky, ParamKind::Scalar, "negative_slope"};
  check_tensor(op, "grad", grad);
  TORCH_CHECK(grad.device().is_cpu(), "fastact.leaky_relu_mask_backward: grad must be a CPU tensor, got ",
              grad.device());
  const int64_t bytes = (grad.numel() + 7) / 8;
  TORCH_CHECK(mask.defined() && mask.layout() == at::kStrided && mask.scalar_type() == at::kByte &&
                  mask.dim() == 1 && mask.numel() == bytes && mask.device() == grad.device(),
              "fastact.leaky_relu_mask_backward: mask must be a 1-d uint8 tensor of (grad.numel() + 7) / 8 = ", bytes,
              " bytes on ", grad.device(), " (one bit per element of grad), got ",
              mask.defined() ? c10::str(mask.scalar_type(), " of shape ", mask.sizes(), " on ", mask.device())
                             : std::string("None"));
  // The bits follow the elements in row-major order, the order of a contiguous grad.
  Prepared p = prepare(op, grad.contiguous(), {negative_slope, nullptr});
  const at::Tensor bits = mask.contiguous();
  at::Tensor grad_input = empty_output_like(p.x);
  p.problem.grad = p.problem.x;
  p.problem.x = nullptr;
  p.problem.out = grad_input.data_ptr();
  if (p.problem.numel > 0) cpu::backward_from_sign_mask(p.problem, bits.data_ptr<uint8_t>());
  return grad_input;
}

}  // namespace fastact
