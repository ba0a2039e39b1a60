// Layout experiment for the CUDA rows kernel (csrc/cuda/kernels.cuh), outside the extension so that several
// layouts build in seconds: LeakyReLU (the leanest op: its time is all memory traffic) and SiLU (fastact's own
// SwishOp from csrc/activations.h: an exp and a division per element) forward, float32 and bfloat16, with the
// block size, vectors per thread, one piece per block or a grid-stride loop, and cache hints varied; plus a
// copy of the extension's general rows kernel (row/piece indexing, head and tail loops, parameter lookup) to
// show what that generality costs. Built as a shared library and timed from rows_layout.py beside torch's
// own kernels and fastact's, on torch's stream. Not part of the package.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../../csrc/activations.h"

namespace {

enum Hint { kDefault = 0, kStreaming = 1, kNonCoherent = 2 };

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T narrow(float x);
template <> __device__ __forceinline__ float narrow<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

struct Leaky {
  static constexpr float kParam = 0.5f;
  __device__ __forceinline__ static float f(float x) { return fastact::LeakyOp::forward(x, kParam); }
};
struct Silu {
  static constexpr float kParam = 1.0f;
  __device__ __forceinline__ static float f(float x) { return fastact::SwishOp::forward(x, kParam); }
};

template <int HINT, typename V>
__device__ __forceinline__ V load(const V* p) {
  static_assert(sizeof(V) == 16, "16-byte vectors");
  if constexpr (HINT == kStreaming) {
    float4 r = __ldcs(reinterpret_cast<const float4*>(p));
    return *reinterpret_cast<V*>(&r);
  } else if constexpr (HINT == kNonCoherent) {
    float4 r = __ldg(reinterpret_cast<const float4*>(p));
    return *reinterpret_cast<V*>(&r);
  } else {
    return *p;
  }
}
template <int HINT, typename V>
__device__ __forceinline__ void store(V* p, const V& v) {
  if constexpr (HINT == kStreaming) {
    __stcs(reinterpret_cast<float4*>(p), *reinterpret_cast<const float4*>(&v));
  } else {
    *p = v;
  }
}

// One piece of THREADS * UNROLL vectors per block (the extension's layout), or, when GRID_STRIDE, a fixed
// grid walking the pieces. n is a multiple of the vector width.
template <typename Op, typename T, int THREADS, int UNROLL, bool GRID_STRIDE, int HINT>
__global__ void __launch_bounds__(THREADS) flat_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t nvec) {
  constexpr int VEC = 16 / sizeof(T);
  using V = Pack<T, VEC>;
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  constexpr int64_t kPieceVecs = int64_t(THREADS) * UNROLL;
  const int64_t pieces = (nvec + kPieceVecs - 1) / kPieceVecs;
  for (int64_t piece = blockIdx.x; piece < pieces; piece += (GRID_STRIDE ? gridDim.x : pieces)) {
    const int64_t base = piece * kPieceVecs + threadIdx.x;
    V in[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t v = base + int64_t(u) * THREADS;
      if (v < nvec) in[u] = load<HINT>(xv + v);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t v = base + int64_t(u) * THREADS;
      if (v < nvec) {
        V o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) o.v[j] = narrow<T>(Op::f(widen(in[u].v[j])));
        store<HINT>(yv + v, o);
      }
    }
  }
}

// The extension's rows kernel, forward pass, as in csrc/cuda/kernels.cuh (one run per row of `inner`
// elements sharing a parameter; a block takes one piece of one run).
template <typename Op, typename T, int UNROLL>
__global__ void __launch_bounds__(256) general_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t inner,
                                                      int64_t channels, int64_t pieces_per_row, bool aligned,
                                                      const float* values, float scalar) {
  constexpr int kThreads = 256, VEC = 16 / sizeof(T);
  constexpr int64_t kPiece = int64_t(kThreads) * UNROLL * VEC;
  const uint32_t piece = blockIdx.x, per_row = static_cast<uint32_t>(pieces_per_row);
  const uint32_t row = piece / per_row;
  const int64_t start = int64_t(row) * inner + int64_t(piece - row * per_row) * kPiece;
  const int64_t end = std::min(start + kPiece, (int64_t(row) + 1) * inner);
  const uint32_t channel = row % static_cast<uint32_t>(channels);
  const float p = values ? values[channel] : scalar;
  (void)p;  // the ops here have a fixed parameter; the lookup is kept for its cost
  int64_t body = start, body_end = start;
  if (aligned) {
    body = std::min(end, (start + VEC - 1) / VEC * VEC);
    body_end = body + (end - body) / VEC * VEC;
  }
  for (int64_t i = start + threadIdx.x; i < body; i += kThreads) out[i] = narrow<T>(Op::f(widen(x[i])));
  for (int64_t i = body_end + threadIdx.x; i < end; i += kThreads) out[i] = narrow<T>(Op::f(widen(x[i])));
  using V = Pack<T, VEC>;
  const int64_t nvec = (body_end - body) / VEC;
  V xv[UNROLL];
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int64_t v = threadIdx.x + int64_t(u) * kThreads;
    if (v < nvec) xv[u] = reinterpret_cast<const V*>(x + body)[v];
  }
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int64_t v = threadIdx.x + int64_t(u) * kThreads;
    if (v < nvec) {
      V o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) o.v[j] = narrow<T>(Op::f(widen(xv[u].v[j])));
      reinterpret_cast<V*>(out + body)[v] = o;
    }
  }
}

int sm_count() {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms;
}

template <typename Op, typename T, int THREADS, int UNROLL, bool GRID_STRIDE, int HINT>
int launch_flat(const void* x, void* y, int64_t n, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t nvec = n / VEC;
  const int64_t pieces = (nvec + int64_t(THREADS) * UNROLL - 1) / (int64_t(THREADS) * UNROLL);
  int64_t grid = pieces;
  if (GRID_STRIDE) grid = std::min<int64_t>(pieces, int64_t(sm_count()) * (2048 / THREADS));
  flat_kernel<Op, T, THREADS, UNROLL, GRID_STRIDE, HINT><<<static_cast<unsigned>(grid), THREADS, 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(y), nvec);
  return static_cast<int>(cudaGetLastError());
}

// As the extension launches an op without a per-channel parameter: one row of n elements.
template <typename Op, typename T, int UNROLL>
int launch_general(const void* x, void* y, int64_t n, cudaStream_t stream) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int64_t kPiece = int64_t(256) * UNROLL * VEC;
  const int64_t pieces_per_row = (n + kPiece - 1) / kPiece;
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
  general_kernel<Op, T, UNROLL><<<static_cast<unsigned>(pieces_per_row), 256, 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(y), n, 1, pieces_per_row, aligned, nullptr, Op::kParam);
  return static_cast<int>(cudaGetLastError());
}

using Launcher = int (*)(const void*, void*, int64_t, cudaStream_t);
struct Variant {
  const char* name;
  Launcher f32_leaky, bf16_leaky, f32_silu, bf16_silu;
};
#define FLAT(NAME, TH, U, GS, H)                                                                 \
  {NAME, launch_flat<Leaky, float, TH, U, GS, H>, launch_flat<Leaky, __nv_bfloat16, TH, U, GS, H>, \
   launch_flat<Silu, float, TH, U, GS, H>, launch_flat<Silu, __nv_bfloat16, TH, U, GS, H>}
#define GENERAL(NAME, U)                                                                    \
  {NAME, launch_general<Leaky, float, U>, launch_general<Leaky, __nv_bfloat16, U>,          \
   launch_general<Silu, float, U>, launch_general<Silu, __nv_bfloat16, U>}
const Variant kVariants[] = {
    GENERAL("general256x4 (extension)", 4),
    GENERAL("general256x1", 1),
    FLAT("piece256x4", 256, 4, false, kDefault),
    FLAT("piece256x2", 256, 2, false, kDefault),
    FLAT("piece256x1", 256, 1, false, kDefault),
    FLAT("piece128x1", 128, 1, false, kDefault),
    FLAT("piece128x2", 128, 2, false, kDefault),
    FLAT("piece128x4", 128, 4, false, kDefault),
    FLAT("piece512x2", 512, 2, false, kDefault),
    FLAT("piece256x4 ldcs/stcs", 256, 4, false, kStreaming),
    FLAT("piece128x1 ldcs/stcs", 128, 1, false, kStreaming),
    FLAT("piece256x4 ldg", 256, 4, false, kNonCoherent),
    FLAT("grid256x4", 256, 4, true, kDefault),
};
#undef FLAT
#undef GENERAL

}  // namespace

extern "C" {
int variant_count() { return sizeof(kVariants) / sizeof(kVariants[0]); }
const char* variant_name(int i) { return kVariants[i].name; }
// op 0: LeakyReLU(0.5), 1: SiLU; dtype 0: float32, 1: bfloat16. n must be a multiple of the vector width and
// the pointers 16-byte aligned. Launches on `stream` (torch's current stream, so graphs can capture it).
int run_variant(int i, int op, int dtype, const void* x, void* y, long long n, void* stream) {
  const Variant& v = kVariants[i];
  const Launcher f = op == 0 ? (dtype == 0 ? v.f32_leaky : v.bf16_leaky) : (dtype == 0 ? v.f32_silu : v.bf16_silu);
  return f(x, y, n, static_cast<cudaStream_t>(stream));
}
}
