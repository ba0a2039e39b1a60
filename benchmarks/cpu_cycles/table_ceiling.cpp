// The ceiling of any 16-bit lookup-table kernel on this CPU: a loop that does nothing but y[i] = table[x[i]]
// over 2^24 bfloat16-sized elements on 2 threads, read with AVX2 gathers, with scalar loads through a stack
// buffer, with scalar loads joined in registers (as fastact's kernels did), with the indices read two per load
// and the joins kept in registers (as they do now), stored from a vector or from the registers, against a copy
// in the same loop, with plain and with non-temporal stores. GB/s count 4 bytes per element (read x, write y).
// No torch needed; see build.sh:
//
//   bash benchmarks/cpu_cycles/build.sh && /tmp/fastact_table_ceiling
//
// Each figure is the median of 40 timed calls (2 threads each).
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

namespace {

uint16_t table[65536 + 2];  // 2 entries of padding: a gather reads 4 bytes at table + 2 x

void store(uint16_t* y, __m256i v, bool stream) {
  stream ? _mm256_stream_si256(reinterpret_cast<__m256i*>(y), v) : _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), v);
}

__attribute__((noinline)) void gathers(const uint16_t* x, uint16_t* y, int64_t n, bool stream) {
  const auto* base = reinterpret_cast<const int*>(table);
  const __m256i low_half = _mm256_set1_epi32(0xffff);
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    const __m256i lo = _mm256_unpacklo_epi16(bits, _mm256_setzero_si256());
    const __m256i hi = _mm256_unpackhi_epi16(bits, _mm256_setzero_si256());
    store(y + i, _mm256_packus_epi32(_mm256_and_si256(_mm256_i32gather_epi32(base, lo, 2), low_half),
                                     _mm256_and_si256(_mm256_i32gather_epi32(base, hi, 2), low_half)), stream);
  }
}

__attribute__((noinline)) void scalar_loads(const uint16_t* x, uint16_t* y, int64_t n, bool stream) {
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    alignas(32) uint16_t values[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) values[k] = table[x[i + k]];
    store(y + i, _mm256_load_si256(reinterpret_cast<const __m256i*>(values)), stream);
  }
}

// fastact's lookup_bits (kernels.h) until 2026-12: four entries joined in a general register, the vector built
// 64 bits at a time, which avoids the stack buffer's failed store forwarding.
uint64_t lookup_four(const uint16_t* x) {
  return uint64_t(table[x[0]]) | uint64_t(table[x[1]]) << 16 | uint64_t(table[x[2]]) << 32 |
         uint64_t(table[x[3]]) << 48;
}

__attribute__((noinline)) void register_joins(const uint16_t* x, uint16_t* y, int64_t n, bool stream) {
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    const __m128i lo = _mm_insert_epi64(_mm_cvtsi64_si128(static_cast<long long>(lookup_four(x + i))),
                                        static_cast<long long>(lookup_four(x + i + 4)), 1);
    const __m128i hi = _mm_insert_epi64(_mm_cvtsi64_si128(static_cast<long long>(lookup_four(x + i + 8))),
                                        static_cast<long long>(lookup_four(x + i + 12)), 1);
    store(y + i, _mm256_set_m128i(hi, lo), stream);
  }
}

// fastact's lookup_four now: four entries joined in a general register, the indices taken from two 32-bit loads
// of x, and the register kept out of vector code (an empty asm: otherwise GCC's SLP vectorizer rebuilds the
// joins with vector inserts and shuffles, which all queue on one port).
[[gnu::always_inline]] inline uint64_t lookup_four_pairs(const uint16_t* x) {
  uint32_t lo, hi;
  __builtin_memcpy(&lo, x, 4);
  __builtin_memcpy(&hi, x + 2, 4);
  uint64_t word = uint64_t(table[lo & 0xffff]) | uint64_t(table[lo >> 16]) << 16 |
                  uint64_t(table[hi & 0xffff]) << 32 | uint64_t(table[hi >> 16]) << 48;
  asm("" : "+r"(word));
  return word;
}

// The words stored from the general registers: movnti when streaming.
__attribute__((noinline)) void register_stores(const uint16_t* x, uint16_t* y, int64_t n, bool stream) {
  for (int64_t i = 0; i + 16 <= n; i += 16) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const uint64_t word = lookup_four_pairs(x + i + 4 * k);
      if (stream) {
        _mm_stream_si64(reinterpret_cast<long long*>(y + i + 4 * k), static_cast<long long>(word));
      } else {
        __builtin_memcpy(y + i + 4 * k, &word, 8);
      }
    }
  }
}

// The words moved into a vector and stored from it (fastact's lookup_bits).
__attribute__((noinline)) void register_vectors(const uint16_t* x, uint16_t* y, int64_t n, bool stream) {
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    const auto w = [&](int k) { return static_cast<long long>(lookup_four_pairs(x + i + 4 * k)); };
    store(y + i, _mm256_set_epi64x(w(3), w(2), w(1), w(0)), stream);
  }
}

__attribute__((noinline)) void copy(const uint16_t* x, uint16_t* y, int64_t n, bool stream) {
  for (int64_t i = 0; i + 16 <= n; i += 16) store(y + i, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), stream);
}

using Kernel = void (*)(const uint16_t*, uint16_t*, int64_t, bool);

double median_seconds(Kernel kernel, const uint16_t* x, uint16_t* y, int64_t n, bool stream) {
  std::vector<double> times;
  for (int call = 0; call < 40; ++call) {
    const auto start = std::chrono::steady_clock::now();
    std::thread other([&] { kernel(x + n / 2, y + n / 2, n / 2, stream); });
    kernel(x, y, n / 2, stream);
    other.join();
    _mm_sfence();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

}  // namespace

int main() {
  constexpr int64_t n = int64_t(1) << 24;
  std::mt19937 rng(0);
  for (auto& entry : table) entry = static_cast<uint16_t>(rng());
  auto* x = static_cast<uint16_t*>(std::aligned_alloc(64, n * 2));
  auto* y = static_cast<uint16_t*>(std::aligned_alloc(64, n * 2));
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float f = normal(rng);
    uint32_t bits;
    __builtin_memcpy(&bits, &f, 4);
    x[i] = static_cast<uint16_t>(bits >> 16);  // a bfloat16 value's bits
    y[i] = 0;
  }
  const struct {
    const char* name;
    Kernel kernel;
  } kernels[] = {{"copy", copy}, {"table, scalar loads", scalar_loads}, {"table, AVX2 gathers", gathers},
                 {"table, register joins", register_joins},
                 {"table, paired, gpr stores", register_stores}, {"table, paired, vectors", register_vectors}};
  for (bool stream : {false, true}) {
    for (const auto& k : kernels) {
      const double s = median_seconds(k.kernel, x, y, n, stream);
      std::printf("%-24s %-17s %7.3f ms %6.1f GB/s\n", k.name, stream ? "streaming stores" : "plain stores", s * 1e3,
                  4.0 * n / s / 1e9);
    }
  }
  std::free(x);
  std::free(y);
}
