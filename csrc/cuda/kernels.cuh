// The CUDA kernels: one template per memory shape, shared by every activation (functors in activations.h).
//
// A dense tensor in memory order is [outer, channels, inner] (ops.h). Two shapes of work:
//  * rows    (one channel, or inner >= kRowMin, e.g. NCHW): runs of `inner` elements share a parameter. A block
//            takes one piece of up to kPiece elements of one run: 16-byte vector loads and stores (after a scalar
//            head where the run is not aligned), and one partial sum of the parameter gradient per piece.
//  * columns (inner < kRowMin, e.g. channels_last): the tensor is a stack of slabs of channels * inner elements;
//            a thread owns a fixed column (a vector of elements) of the slab and walks down the slabs, so its
//            parameter and channel never change; the parameter gradient is summed per column and block.
//  * flat    (no tensor parameter, no parameter gradient, 16-byte aligned: SiLU, Swish with a float beta, Mish,
//            LeakyReLU): the rows shape without its generality; a block takes kThreads x flat_vectors<Op>
//            vectors, the last block the tail.
// A second kernel adds the partial sums of each channel in a fixed order, so the parameter gradient has the
// same bits on every run (no atomics).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "../activations.h"
#include "../ops.h"

namespace fastact::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;          // independent 16-byte accesses in flight per thread (columns; rows pick 2 or 4)
constexpr int64_t kRowMin = 1024;   // shorter runs use the column shape

enum class Pass { Forward, Backward, BackwardParamGrad };

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename opmath_t>
struct ParamAccess {
  const opmath_t* values;  // one per channel, or null: every channel uses `scalar`
  opmath_t scalar;
  __device__ __forceinline__ opmath_t operator[](int64_t channel) const {
    return values ? values[channel] : scalar;
  }
};

// float with the GPU's fast exp (ex2.approx) and division, the compute type of float16/bfloat16 tensors:
// their 11- or 8-bit results cannot tell its float error (2 + 1.17 |x| ulps for __expf, ~100 near |z| = 87) apart,
// while the exact expf and division would make those kernels compute-bound (they move half the bytes of float32 per
// element). (A parameter's float32 gradient sums terms with that error too, up to ~1e-5 relative each in the far
// tails, where the CPU's are within a few ulps.) The functors
// run on it unchanged: the operators and fa_* overloads below are found by argument-dependent lookup.
struct FastFloat {
  float v;
  FastFloat() = default;
  __host__ __device__ constexpr FastFloat(float x) : v(x) {}
  __host__ __device__ constexpr FastFloat(double x) : v(static_cast<float>(x)) {}
  __host__ __device__ constexpr FastFloat(int x) : v(static_cast<float>(x)) {}
};
// Host versions exist only so that the host-device functors compile for FastFloat; kernels use the device ones.
#if defined(__CUDA_ARCH__)
#define FASTACT_FAST(device_expr, host_expr) device_expr
#else
#define FASTACT_FAST(device_expr, host_expr) host_expr
#endif
__host__ __device__ __forceinline__ FastFloat operator+(FastFloat a, FastFloat b) { return a.v + b.v; }
__host__ __device__ __forceinline__ FastFloat operator-(FastFloat a, FastFloat b) { return a.v - b.v; }
__host__ __device__ __forceinline__ FastFloat operator*(FastFloat a, FastFloat b) { return a.v * b.v; }
__host__ __device__ __forceinline__ FastFloat operator/(FastFloat a, FastFloat b) {
  return FASTACT_FAST(__fdividef(a.v, b.v), a.v / b.v);
}
__host__ __device__ __forceinline__ bool operator==(FastFloat a, FastFloat b) { return a.v == b.v; }
__host__ __device__ __forceinline__ bool operator>=(FastFloat a, FastFloat b) { return a.v >= b.v; }
__host__ __device__ __forceinline__ bool operator>(FastFloat a, FastFloat b) { return a.v > b.v; }
__host__ __device__ __forceinline__ FastFloat fa_exp_nonpositive(FastFloat x) {
  return FASTACT_FAST(__expf(x.v), std::exp(x.v));
}
__host__ __device__ __forceinline__ FastFloat fa_abs(FastFloat x) { return fabsf(x.v); }
__host__ __device__ __forceinline__ FastFloat fa_neg(FastFloat x) { return -x.v; }
#undef FASTACT_FAST

template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>,
                                     FastFloat, at::opmath_type<scalar_t>>;
__host__ __device__ __forceinline__ float to_opmath(FastFloat a) { return a.v; }
template <typename T>
__host__ __device__ __forceinline__ T to_opmath(T a) { return a; }

template <typename Op, typename scalar_t, typename opmath_t>
__device__ __forceinline__ scalar_t forward_element(scalar_t x, opmath_t p) {
  using C = compute_t<scalar_t>;
  return static_cast<scalar_t>(to_opmath(Op::forward(C(static_cast<opmath_t>(x)), C(p))));
}

// Returns grad * f'(x) and sets gp to grad * df/dparam.
template <typename Op, typename scalar_t, typename opmath_t>
__device__ __forceinline__ scalar_t backward_element(scalar_t g, scalar_t x, opmath_t p, opmath_t& gp) {
  using C = compute_t<scalar_t>;
  C gx, gpc;
  Op::backward(C(static_cast<opmath_t>(g)), C(static_cast<opmath_t>(x)), C(p), gx, gpc);
  gp = to_opmath(gpc);
  return static_cast<scalar_t>(to_opmath(gx));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a block of kBlock threads in a fixed order; the result is valid in thread 0.
template <int kBlock = kThreads, typename T>
__device__ __forceinline__ T block_sum(T v) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "whole warps, at most 32 of them");
  __shared__ T warp_sums[kBlock / 32];
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kBlock / 32 ? warp_sums[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  return v;
}

// One element: forward writes out[i] = f(x[i]); backward writes out[i] = grad * f'(x) and returns the
// parameter-gradient term.
template <typename Op, Pass P, typename scalar_t, typename opmath_t>
__device__ __forceinline__ opmath_t apply(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                                          scalar_t* __restrict__ out, int64_t i, opmath_t param) {
  if constexpr (P == Pass::Forward) {
    out[i] = forward_element<Op>(x[i], param);
    return opmath_t(0);
  } else {
    opmath_t gp;
    out[i] = backward_element<Op>(grad[i], x[i], param, gp);
    return gp;
  }
}

// A thread's UNROLL 16-byte vectors: vector indices first + u * kThreads (u < UNROLL) below nvec, counted
// from element `offset` (16-byte aligned) of x, grad and out. All loads are issued before any math, so they
// are in flight together. Adds the thread's parameter-gradient terms to acc (backward), in element order.
template <typename Op, Pass P, int VEC, int UNROLL, typename scalar_t, typename opmath_t>
__device__ __forceinline__ void apply_vectors(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                                              scalar_t* __restrict__ out, int64_t offset, int64_t first, int64_t nvec,
                                              opmath_t p, opmath_t& acc) {
  using V = Pack<scalar_t, VEC>;
  V xv[UNROLL], gv[UNROLL];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int64_t v = first + int64_t(u) * kThreads;
    if (v < nvec) {
      xv[u] = reinterpret_cast<const V*>(x + offset)[v];
      if constexpr (P != Pass::Forward) gv[u] = reinterpret_cast<const V*>(grad + offset)[v];
    }
  }
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int64_t v = first + int64_t(u) * kThreads;
    if (v < nvec) {
      V o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        if constexpr (P == Pass::Forward) {
          o.v[j] = forward_element<Op>(xv[u].v[j], p);
        } else {
          opmath_t gp;
          o.v[j] = backward_element<Op>(gv[u].v[j], xv[u].v[j], p, gp);
          acc += gp;
        }
      }
      reinterpret_cast<V*>(out + offset)[v] = o;
    }
  }
}

template <typename Op, Pass P, int VEC, int UNROLL, typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kThreads)
rows_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad, scalar_t* __restrict__ out,
            int64_t inner, int64_t channels, int64_t pieces_per_row, bool aligned, ParamAccess<opmath_t> param,
            opmath_t* __restrict__ partials) {
  constexpr int64_t kPiece = int64_t(kThreads) * UNROLL * VEC;
  // 32-bit division: pieces, rows and channels are all under 2^31 (checked at launch), and a 64-bit division
  // is a long instruction sequence that every block runs before its first load.
  const uint32_t piece = blockIdx.x, per_row = static_cast<uint32_t>(pieces_per_row);
  const uint32_t row = piece / per_row;
  const int64_t start = int64_t(row) * inner + int64_t(piece - row * per_row) * kPiece;
  const int64_t end = std::min(start + kPiece, (int64_t(row) + 1) * inner);
  const opmath_t p = param[row % static_cast<uint32_t>(channels)];
  opmath_t acc(0);

  int64_t body = start, body_end = start;
  if (aligned) {  // base pointers are 16-byte aligned; align the element offset too
    body = std::min(end, (start + VEC - 1) / VEC * VEC);
    body_end = body + (end - body) / VEC * VEC;
  }
  // Scalar head and tail (everything, where the pointers are not aligned).
  for (int64_t i = start + threadIdx.x; i < body; i += kThreads) acc += apply<Op, P>(x, grad, out, i, p);
  for (int64_t i = body_end + threadIdx.x; i < end; i += kThreads) acc += apply<Op, P>(x, grad, out, i, p);

  apply_vectors<Op, P, VEC, UNROLL>(x, grad, out, body, threadIdx.x, (body_end - body) / VEC, p, acc);
  if constexpr (P == Pass::BackwardParamGrad) {
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[piece] = acc;
  }
}

// The common case without the rows kernel's generality: a dense run of numel elements sharing one parameter
// (none, or a float), the pointers 16-byte aligned, no parameter gradient. A block takes UNROLL vectors per
// thread, with no row or piece indexing and no head loop; the last block also does the numel % VEC tail.
template <typename Op, Pass P, int VEC, int UNROLL, typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kThreads)
flat_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad, scalar_t* __restrict__ out,
            int64_t numel, opmath_t param) {
  static_assert(P != Pass::BackwardParamGrad, "the parameter gradient takes the rows or columns kernel");
  const int64_t nvec = numel / VEC;
  opmath_t unused(0);
  apply_vectors<Op, P, VEC, UNROLL>(x, grad, out, 0, int64_t(blockIdx.x) * kThreads * UNROLL + threadIdx.x, nvec,
                                    param, unused);
  if (blockIdx.x == gridDim.x - 1) {
    for (int64_t i = nvec * VEC + threadIdx.x; i < numel; i += kThreads) apply<Op, P>(x, grad, out, i, param);
  }
}

template <typename Op, Pass P, int VEC, typename scalar_t, typename opmath_t>
__global__ void __launch_bounds__(kThreads)
columns_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad, scalar_t* __restrict__ out,
               int64_t inner, int64_t slab, int64_t slabs, int64_t slabs_per_block, ParamAccess<opmath_t> param,
               opmath_t* __restrict__ partials) {
  const int64_t cols = slab / VEC;  // vector columns per slab
  int64_t col, row_offset, row_step;
  if (cols >= kThreads) {
    col = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    row_offset = 0;
    row_step = 1;
  } else {  // several slabs side by side in one block
    col = threadIdx.x % cols;
    row_offset = threadIdx.x / cols;
    row_step = kThreads / cols;
  }
  const bool active = col < cols && row_offset < row_step;
  const int64_t first = int64_t(blockIdx.y) * slabs_per_block;
  const int64_t last = std::min(slabs, first + slabs_per_block);

  opmath_t p[VEC], acc[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    p[j] = active ? param[(col * VEC + j) / inner] : opmath_t(0);
    acc[j] = opmath_t(0);
  }
  using V = Pack<scalar_t, VEC>;
  if (active) {
    for (int64_t s0 = first + row_offset; s0 < last; s0 += row_step * kUnroll) {
      V xv[kUnroll], gv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t s = s0 + u * row_step;
        if (s < last) {
          const int64_t offset = s * slab + col * VEC;
          xv[u] = *reinterpret_cast<const V*>(x + offset);
          if constexpr (P != Pass::Forward) gv[u] = *reinterpret_cast<const V*>(grad + offset);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t s = s0 + u * row_step;
        if (s < last) {
          V o;
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            if constexpr (P == Pass::Forward) {
              o.v[j] = forward_element<Op>(xv[u].v[j], p[j]);
            } else {
              opmath_t gp;
              o.v[j] = backward_element<Op>(gv[u].v[j], xv[u].v[j], p[j], gp);
              acc[j] += gp;
            }
          }
          *reinterpret_cast<V*>(out + s * slab + col * VEC) = o;
        }
      }
    }
  }
  if constexpr (P == Pass::BackwardParamGrad) {
    opmath_t* block_partials = partials + int64_t(blockIdx.y) * slab;
    if (row_step == 1) {
      if (active) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) block_partials[col * VEC + j] = acc[j];
      }
    } else {  // add the slabs side by side in this block, in a fixed order
      __shared__ opmath_t shared[kThreads * VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) shared[threadIdx.x * VEC + j] = acc[j];
      __syncthreads();
      if (threadIdx.x < cols) {
        for (int j = 0; j < VEC; ++j) {
          opmath_t sum(0);
          for (int64_t r = 0; r < row_step; ++r) sum += shared[(r * cols + threadIdx.x) * VEC + j];
          block_partials[threadIdx.x * VEC + j] = sum;
        }
      }
    }
  }
}

// param_grad[c] = sum over i < count of partials[c * channel_stride + (i / run) * run_stride + i % run], in a
// fixed order: one block per channel, kBlock threads with several independent loads in flight each (a single
// channel may have tens of thousands of partials), the (i / run, i % run) pair advanced without division.
template <int kBlock, typename opmath_t>
__global__ void __launch_bounds__(kBlock)
reduce_partials_kernel(const opmath_t* __restrict__ partials, opmath_t* __restrict__ param_grad, int64_t count,
                       int64_t run, int64_t run_stride, int64_t channel_stride) {
  const opmath_t* base = partials + int64_t(blockIdx.x) * channel_stride;
  const int64_t step_q = kBlock / run, step_r = kBlock % run;
  int64_t q = threadIdx.x / run, r = threadIdx.x % run;
  double sum = 0.0;
#pragma unroll 8
  for (int64_t i = threadIdx.x; i < count; i += kBlock) {
    sum += static_cast<double>(base[q * run_stride + r]);
    q += step_q;
    r += step_r;
    if (r >= run) {
      r -= run;
      ++q;
    }
  }
  sum = block_sum<kBlock>(sum);
  if (threadIdx.x == 0) param_grad[blockIdx.x] = static_cast<opmath_t>(sum);
}

// The block size follows the partials per channel: 1024 threads for a few channels with many partials each,
// one warp for many channels with a few each (PReLU after a Linear layer, x (32, 4096): 4096 channels of 32
// partials, where 1024-thread blocks would cost many times the main kernel). The size depends on count only,
// so a shape's gradient has the same bits on every call.
template <typename opmath_t>
void launch_reduce_partials(const opmath_t* partials, opmath_t* param_grad, int64_t channels, int64_t count,
                            int64_t run, int64_t run_stride, int64_t channel_stride, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(channels);
  if (count <= 256) {
    reduce_partials_kernel<32><<<grid, 32, 0, stream>>>(partials, param_grad, count, run, run_stride, channel_stride);
  } else if (count <= 8192) {
    reduce_partials_kernel<256><<<grid, 256, 0, stream>>>(partials, param_grad, count, run, run_stride, channel_stride);
  } else {
    reduce_partials_kernel<1024><<<grid, 1024, 0, stream>>>(partials, param_grad, count, run, run_stride,
                                                             channel_stride);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int multiprocessor_count() {
  static std::atomic<int> counts[64] = {};  // ops run without the GIL, so calls may race to fill an entry
  const int device = c10::cuda::current_device();
  if (device < 64) {
    if (const int known = counts[device].load(std::memory_order_relaxed); known > 0) return known;
  }
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) counts[device].store(count, std::memory_order_relaxed);
  return count;
}

// A vectors-per-thread override from the environment: 1, 2 or 4, else 0 (none).
int vectors_from_env(const char* name) {
  const char* env = std::getenv(name);
  const int v = env ? std::atoi(env) : 0;
  return v == 1 || v == 2 || v == 4 ? v : 0;
}
// FASTACT_CUDA_PIECE_VECTORS: the rows kernel's piece size; read once.
int piece_vectors_override() {
  static const int value = vectors_from_env("FASTACT_CUDA_PIECE_VECTORS");
  return value;
}
// FASTACT_CUDA_FLAT: exactly "1", "2" or "4" forces the flat kernel's vectors per thread, "0" puts the rows
// kernel in its place (for measuring them); unset or anything else: flat_vectors<Op> (-1). Read once.
int flat_vectors_override() {
  static const int value = [] {
    const char* env = std::getenv("FASTACT_CUDA_FLAT");
    const std::string setting = env != nullptr ? env : "";
    return setting == "0" ? 0 : setting == "1" ? 1 : setting == "2" ? 2 : setting == "4" ? 4 : -1;
  }();
  return value;
}

// The flat kernel's 16-byte vectors per thread. Measured on an H200 at 2^28 elements, time over torch's in
// the same run (benchmarks/results/gpu/README.md): one vector per thread is the fastest for the short element
// functions (LeakyReLU forward 1.00x, against 1.04x with 4 vectors or the rows kernel; SiLU float32 forward
// 1.01x against 1.03x and 1.08x). Mish's element function is a long dependent chain: with one vector per
// thread too little of it is in flight (bfloat16 and float16 8-16% slower), with 4 it is 0-12% faster than
// the rows kernel.
template <typename Op>
constexpr int flat_vectors = 1;
template <>
constexpr int flat_vectors<MishOp> = 4;

bool aligned16(const void* ptr) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename Op, Pass P, typename scalar_t>
void launch_typed(const ElementwiseProblem& pr) {
  using opmath_t = at::opmath_type<scalar_t>;
  constexpr int VEC = 16 / sizeof(scalar_t);
  const auto* x = static_cast<const scalar_t*>(pr.x);
  const auto* grad = static_cast<const scalar_t*>(pr.grad);
  auto* out = static_cast<scalar_t*>(pr.out);
  const ParamAccess<opmath_t> param{static_cast<const opmath_t*>(pr.param),
                                    static_cast<opmath_t>(pr.param_scalar)};
  const bool aligned = aligned16(x) && aligned16(grad) && aligned16(out);
  TORCH_CHECK(pr.channels < (int64_t(1) << 31), "fastact: CUDA kernels take fewer than 2^31 channels, got ",
              pr.channels);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto float_options = at::TensorOptions().dtype(c10::CppTypeToScalarType<opmath_t>::value)
                                 .device(at::kCUDA, c10::cuda::current_device());
  at::Tensor partials;

  if constexpr (P != Pass::BackwardParamGrad) {
    const int flat = flat_vectors_override() < 0 ? flat_vectors<Op> : flat_vectors_override();
    if (flat != 0 && aligned && pr.param == nullptr) {
      auto launch_flat = [&](auto unroll_tag) {
        constexpr int U = decltype(unroll_tag)::value;
        const int64_t per_block = int64_t(kThreads) * U;  // vectors
        const int64_t blocks = std::max<int64_t>(1, (pr.numel / VEC + per_block - 1) / per_block);
        TORCH_CHECK(blocks < (int64_t(1) << 31), "fastact: tensor too large for one launch");
        flat_kernel<Op, P, VEC, U><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
            x, grad, out, pr.numel, param.scalar);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      switch (flat) {
        case 1: return launch_flat(std::integral_constant<int, 1>{});
        case 2: return launch_flat(std::integral_constant<int, 2>{});
        default: return launch_flat(std::integral_constant<int, 4>{});
      }
    }
  }
  if (pr.channels == 1 || pr.inner >= kRowMin) {
    auto launch_rows = [&](auto unroll_tag) {
      constexpr int U = decltype(unroll_tag)::value;
      constexpr int64_t kPiece = int64_t(kThreads) * U * VEC;
      const int64_t rows = pr.numel / pr.inner;
      const int64_t pieces_per_row = (pr.inner + kPiece - 1) / kPiece;
      const int64_t pieces = rows * pieces_per_row;
      TORCH_CHECK(pieces < (int64_t(1) << 31), "fastact: tensor too large for one launch");
      if constexpr (P == Pass::BackwardParamGrad) partials = at::empty({pieces}, float_options);
      opmath_t* partial_ptr = partials.defined() ? partials.template data_ptr<opmath_t>() : nullptr;
      rows_kernel<Op, P, VEC, U><<<static_cast<unsigned>(pieces), kThreads, 0, stream>>>(
          x, grad, out, pr.inner, pr.channels, pieces_per_row, aligned, param, partial_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if constexpr (P == Pass::BackwardParamGrad) {
        // channel c: rows n * channels + c for every n, each with pieces_per_row partials
        launch_reduce_partials(partial_ptr, static_cast<opmath_t*>(pr.param_grad), pr.channels,
                               rows / pr.channels * pieces_per_row, pieces_per_row, pr.channels * pieces_per_row,
                               pieces_per_row, stream);
      }
    };
    // Pieces of 4 vectors per thread, or 2 where a run is shorter than that (measured on an H200: bfloat16
    // per-channel rows of 4096 elements ran at 0.76-0.86 of copy bandwidth with half-empty 4-vector pieces,
    // 0.92-0.95 with 2; benchmarks/results/gpu/2026-11-27/README.md). FASTACT_CUDA_PIECE_VECTORS=1|2|4
    // overrides the choice, for measuring it.
    switch (piece_vectors_override()) {
      case 1: return launch_rows(std::integral_constant<int, 1>{});
      case 2: return launch_rows(std::integral_constant<int, 2>{});
      case 4: return launch_rows(std::integral_constant<int, 4>{});
      default: break;
    }
    if (pr.inner >= int64_t(kThreads) * 4 * VEC) return launch_rows(std::integral_constant<int, 4>{});
    return launch_rows(std::integral_constant<int, 2>{});
  }

  const int64_t slab = pr.channels * pr.inner;
  const int64_t slabs = pr.numel / slab;
  auto launch_columns = [&](auto vec_tag) {
    constexpr int W = decltype(vec_tag)::value;
    const int64_t cols = slab / W;
    const int64_t grid_x = cols >= kThreads ? (cols + kThreads - 1) / kThreads : 1;
    TORCH_CHECK(grid_x < (int64_t(1) << 31), "fastact: tensor too large for one launch");
    // Enough blocks to fill the GPU a few times over, at most 65535 slab groups.
    const int64_t target_blocks = int64_t(multiprocessor_count()) * (2048 / kThreads) * 4;
    int64_t grid_y = std::clamp<int64_t>((target_blocks + grid_x - 1) / grid_x, 1, std::min<int64_t>(slabs, 65535));
    const int64_t slabs_per_block = (slabs + grid_y - 1) / grid_y;
    grid_y = (slabs + slabs_per_block - 1) / slabs_per_block;
    if constexpr (P == Pass::BackwardParamGrad) partials = at::empty({grid_y * slab}, float_options);
    opmath_t* partial_ptr = partials.defined() ? partials.template data_ptr<opmath_t>() : nullptr;
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
    columns_kernel<Op, P, W><<<grid, kThreads, 0, stream>>>(x, grad, out, pr.inner, slab, slabs,
                                                             slabs_per_block, param, partial_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if constexpr (P == Pass::BackwardParamGrad) {
      // channel c: entries y * slab + c * inner + k for every slab group y and k < inner
      launch_reduce_partials(partial_ptr, static_cast<opmath_t*>(pr.param_grad), pr.channels, grid_y * pr.inner,
                             pr.inner, slab, pr.inner, stream);
    }
  };
  if (aligned && slab % VEC == 0) {
    launch_columns(std::integral_constant<int, VEC>{});
  } else {
    launch_columns(std::integral_constant<int, 1>{});
  }
}

template <typename Op, Pass P>
void launch(const ElementwiseProblem& pr) {
  switch (pr.dtype) {
    case c10::ScalarType::Float: return launch_typed<Op, P, float>(pr);
    case c10::ScalarType::Double: return launch_typed<Op, P, double>(pr);
    case c10::ScalarType::Half: return launch_typed<Op, P, c10::Half>(pr);
    case c10::ScalarType::BFloat16: return launch_typed<Op, P, c10::BFloat16>(pr);
    default: TORCH_CHECK(false, "fastact: unsupported dtype ", pr.dtype);
  }
}

// The forward, in Op's cheaper form where Op has one for nonzero parameters and the parameter is a nonzero
// float (a tensor parameter lives on the device: reading it would synchronize).
template <typename Op>
void launch_forward(const ElementwiseProblem& pr) {
  using NonzeroOp = typename NonzeroParamForward<Op>::type;
  if constexpr (!std::is_same_v<NonzeroOp, Op>) {
    if (pr.param == nullptr && scalar_param_nonzero(pr)) return launch<NonzeroOp, Pass::Forward>(pr);
  }
  launch<Op, Pass::Forward>(pr);
}

}  // namespace

// Each functor's launchers are compiled in a file of their own (swish.cu, mish.cu, leaky.cu: one line each),
// so that the files build in parallel; dispatch.cu picks one by ActivationId.
#define FASTACT_CUDA_LAUNCHERS(F)                        \
  void forward_##F(const ElementwiseProblem& pr) {      \
    launch_forward<F##Op>(pr);                           \
  }                                                      \
  void backward_##F(const ElementwiseProblem& pr) {     \
    if (pr.param_grad != nullptr) {                      \
      launch<F##Op, Pass::BackwardParamGrad>(pr);        \
    } else {                                             \
      launch<F##Op, Pass::Backward>(pr);                 \
    }                                                    \
  }

}  // namespace fastact::cuda
