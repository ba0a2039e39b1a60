// Layout experiment for the CUDA rows kernel (csrc/cuda/kernels.cuh), outside the extension so that several
// layouts build in seconds: a LeakyReLU forward (the leanest op: its time is all memory traffic) in float32 and
// bfloat16, with the block size, vectors per thread, one piece per block or a grid-stride loop, and cache
// hints varied. Built as a shared library and timed from rows_layout.py beside torch's own kernels, on
// torch's stream, with CUDA events. Not part of the package.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>

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

template <int HINT, typename V>
__device__ __forceinline__ V load(const V* p) {
  if constexpr (HINT == kStreaming) {
    static_assert(sizeof(V) == 16, "");
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
// grid walking the pieces.
template <typename T, int THREADS, int UNROLL, bool GRID_STRIDE, int HINT>
__global__ void __launch_bounds__(THREADS) leaky_rows(const T* __restrict__ x, T* __restrict__ y, int64_t nvec,
                                                      float alpha) {
  constexpr int VEC = 16 / sizeof(T);
  using V = Pack<T, VEC>;
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  const int64_t piece_vecs = int64_t(THREADS) * UNROLL;
  const int64_t pieces = (nvec + piece_vecs - 1) / piece_vecs;
  for (int64_t piece = blockIdx.x; piece < pieces; piece += (GRID_STRIDE ? gridDim.x : pieces)) {
    const int64_t base = piece * piece_vecs + threadIdx.x;
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
        for (int j = 0; j < VEC; ++j) {
          const float a = widen(in[u].v[j]);
          o.v[j] = narrow<T>(a > 0.f ? a : a * alpha);
        }
        store<HINT>(yv + v, o);
      }
    }
  }
}

template <typename T, int THREADS, int UNROLL, bool GRID_STRIDE, int HINT>
int launch(const void* x, void* y, int64_t n, float alpha, int sms) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t nvec = n / VEC;
  const int64_t pieces = (nvec + int64_t(THREADS) * UNROLL - 1) / (int64_t(THREADS) * UNROLL);
  int64_t grid = pieces;
  if (GRID_STRIDE) {
    const int64_t resident = int64_t(sms) * (2048 / THREADS);
    grid = pieces < resident ? pieces : resident;
  }
  leaky_rows<T, THREADS, UNROLL, GRID_STRIDE, HINT><<<static_cast<unsigned>(grid), THREADS>>>(
      static_cast<const T*>(x), static_cast<T*>(y), nvec, alpha);
  return static_cast<int>(cudaGetLastError());
}

using Launcher = int (*)(const void*, void*, int64_t, float, int);
struct Variant {
  const char* name;
  Launcher f32;
  Launcher bf16;
};
#define V(NAME, TH, U, GS, H) \
  {NAME, launch<float, TH, U, GS, H>, launch<__nv_bfloat16, TH, U, GS, H>}
const Variant kVariants[] = {
    V("piece256x4 (extension)", 256, 4, false, kDefault),
    V("piece256x2", 256, 2, false, kDefault),
    V("piece256x1", 256, 1, false, kDefault),
    V("piece128x1", 128, 1, false, kDefault),
    V("piece128x2", 128, 2, false, kDefault),
    V("piece128x4", 128, 4, false, kDefault),
    V("piece512x2", 512, 2, false, kDefault),
    V("piece256x4 ldcs/stcs", 256, 4, false, kStreaming),
    V("piece256x2 ldcs/stcs", 256, 2, false, kStreaming),
    V("piece128x1 ldcs/stcs", 128, 1, false, kStreaming),
    V("piece256x4 ldg", 256, 4, false, kNonCoherent),
    V("grid256x4", 256, 4, true, kDefault),
    V("grid256x2", 256, 2, true, kDefault),
    V("grid256x2 ldcs/stcs", 256, 2, true, kStreaming),
};
#undef V

}  // namespace

extern "C" {
int variant_count() { return sizeof(kVariants) / sizeof(kVariants[0]); }
const char* variant_name(int i) { return kVariants[i].name; }
// dtype 0: float32, 1: bfloat16. n must be a multiple of the vector width; pointers 16-byte aligned.
int run_variant(int i, int dtype, const void* x, void* y, long long n, float alpha) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return (dtype == 0 ? kVariants[i].f32 : kVariants[i].bf16)(x, y, n, alpha, sms);
}
}
