// CPU entry points: picks the kernel build for this CPU, splits the work over threads, and reduces
// parameter gradients in a fixed order.
//
// Determinism: the work is cut into pieces whose bounds depend only on the tensor's shape (never on the
// thread count), each piece writes its own partial sum, and the partials are added in index order. The
// parameter gradient therefore has the same bits on every run and for any number of threads.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#if !defined(_WIN32)
#include <pthread.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include "../activations.h"
#include "../fork_safe.h"
#include "capability.h"

namespace fastact::cpu {
namespace {

constexpr int64_t kGrain = 32768;  // elements per piece of work (and per partial sum)
constexpr int64_t kMinRun = 64;    // shorter per-channel runs are reduced per slab instead of per run

struct Capability {
  const char* name;
  const RangeKernels* kernels;
  bool (*supported)();
};

bool always() { return true; }
#if defined(FASTACT_CPU_X86)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool has_avx512_bf16() {
  __builtin_cpu_init();
  return has_avx512() && __builtin_cpu_supports("avx512bf16");
}
#endif

// Ordered from the baseline to the widest.
const Capability kCapabilities[] = {
    {"default", &DEFAULT::kRangeKernels, &always},
#if defined(FASTACT_CPU_X86)
    {"avx2", &AVX2::kRangeKernels, &has_avx2},
    {"avx512", &AVX512::kRangeKernels, &has_avx512},
    {"avx512_bf16", &AVX512_BF16::kRangeKernels, &has_avx512_bf16},
#endif
};

const Capability* find(const std::string& name) {
  for (const auto& c : kCapabilities) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

// The widest build this CPU runs, capped by FASTACT_CPU_CAPABILITY (or ATen's ATEN_CPU_CAPABILITY) if set.
const Capability* detect() {
  const Capability* best = &kCapabilities[0];
  for (const auto& c : kCapabilities) {
    if (c.supported()) best = &c;
  }
  for (const char* var : {"FASTACT_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY"}) {
    const char* env = std::getenv(var);
    if (env == nullptr || *env == '\0') continue;
    std::string name(env);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const Capability* wanted = find(name);
    if (wanted != nullptr && wanted->supported() && wanted <= best) return wanted;
    if (std::strcmp(var, "FASTACT_CPU_CAPABILITY") == 0) {  // ATen's variable keeps ATen's meaning, unwarned
      std::string names;
      for (const auto& c : kCapabilities) names += std::string(names.empty() ? "" : ", ") + c.name;
      TORCH_WARN("fastact: FASTACT_CPU_CAPABILITY=", env,
                 wanted == nullptr ? std::string(" is not one of ") + names
                                   : std::string(" is a build this CPU does not run"),
                 "; the variable is ignored");
    }
  }
  return best;
}

// The size of the largest cache one core sees (its share of a shared L3 is not known, so all of it).
int64_t last_level_cache_bytes() {
  int64_t best = 0;
  for (int index = 0; index < 8; ++index) {
    std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string text;
    if (!(file >> text)) break;
    const char unit = text.empty() ? ' ' : text.back();
    const int64_t scale = unit == 'K' ? 1 << 10 : unit == 'M' ? 1 << 20 : 1;
    best = std::max<int64_t>(best, std::atoll(text.c_str()) * scale);
  }
  return best > 0 ? best : int64_t(32) << 20;
}

// A quarter of the last-level cache: in a VM (or beside other processes) a program holds only a share of a
// shared L3. On a 2-vCPU VM whose L3 reads 105 MiB, streaming took 1.05-1.19x less time than plain stores
// from 32 MiB touched (bfloat16 2^23 forward and backward), and was level at 16-24 MiB.
std::atomic<int64_t>& stream_threshold() {
  static std::atomic<int64_t> bytes{-1};  // measured on first use (not in a guarded initializer: fork_safe.h)
  load_or_compute(bytes, int64_t{-1}, [] { return last_level_cache_bytes() / 4; });
  return bytes;
}

// Non-temporal stores for an output that cannot stay in the cache anyway: the bytes the call touches (inputs
// and output) exceed our assumed share of the last-level cache.
bool should_stream(const ElementwiseProblem& p, int tensors) {
  const int64_t bytes = p.numel * static_cast<int64_t>(c10::elementSize(p.dtype)) * tensors;
  return bytes > stream_threshold().load(std::memory_order_relaxed);
}

// Whether no parameter value of the call is zero: checked once per call, O(channels).
bool params_nonzero(const ElementwiseProblem& p) {
  auto none_zero = [&](auto* values) {
    return std::none_of(values, values + p.channels, [](auto v) { return v == 0; });
  };
  if (p.param == nullptr) return scalar_param_nonzero(p);
  if (p.dtype == c10::ScalarType::Double) return none_zero(static_cast<const double*>(p.param));
  return none_zero(static_cast<const float*>(p.param));
}

// Whether every parameter value is at most 1 (so none is NaN), as the kernels see it: O(channels).
bool params_at_most_one(const ElementwiseProblem& p) {
  auto all_at_most_one = [&](auto* values) {
    return std::all_of(values, values + p.channels, [](auto v) { return v <= 1; });
  };
  if (p.param == nullptr) {
    return p.dtype == c10::ScalarType::Double ? p.param_scalar <= 1 : static_cast<float>(p.param_scalar) <= 1;
  }
  if (p.dtype == c10::ScalarType::Double) return all_at_most_one(static_cast<const double*>(p.param));
  return all_at_most_one(static_cast<const float*>(p.param));
}

std::atomic<const Capability*>& capability_slot() {
  static std::atomic<const Capability*> capability{nullptr};  // detected on first use (fork_safe.h)
  load_or_compute(capability, static_cast<const Capability*>(nullptr), detect);
  return capability;
}

const Capability* active() { return capability_slot().load(std::memory_order_acquire); }

// Lookup tables. A 16-bit x has 65536 values, so for the activations whose math is long (an exp and a
// division: swish, mish) a call can read f, the float derivative f', or the pair (df/dx, df/dparam) from a
// table of all of them instead of computing it: built by the kernels themselves from every value (so a call
// gives the same bits either way) and read with scalar loads (AVX2) or gathers (AVX-512). On AVX2 (Zen 3), per
// 8 bfloat16 in L1, the forward takes ~8 cycles against ~14-17 computed, the backward ~7-9 against ~18-20, and
// the backward with a parameter gradient ~11 against ~21; on AVX2 (Zen 1, whose division is slow) ~8 against
// ~29, ~9 against ~34 and ~15 against ~39; on AVX-512 (Sapphire Rapids class) 2.2-2.4x, 2.1-2.4x and 1.6x less
// time than computed (benchmarks/cpu_cycles, kernels.h). Used for calls with one parameter value (none, a
// float, or a one-element tensor) of at least lookup_threshold() elements whose table is kept, and of 4x that
// where one must be built first (65536 evaluations: a learnable beta changes every step, so in training each
// table is built for one call). A build of the (df/dx, df/dbeta) pairs takes ~3x one of f (Xeon, 2 threads:
// ~170 us against ~55), so those wait for 8x: at 2^20 elements, building and reading them took ~1.2x the
// computed backward's time, at 2^21 ~0.95x. The tables of the last kMaxTables (op, dtype, parameter,
// direction, parameter gradient) are kept: 128 KiB for a forward, 256 KiB for a backward, 512 KiB for a
// backward with a parameter gradient.
// The tables hold the bits of the default floating-point environment. torch.set_flush_denormal(True) sets
// MXCSR's flush-to-zero and denormals-are-zero bits on the calling thread; a table built or read under them
// would keep or ignore that mode whatever the current one is. So a caller that flushes gets the computed
// kernel (which flushes as torch's own kernels do), and a build clears the bits on each thread for its work.
#if defined(__x86_64__) || defined(_M_X64)
constexpr unsigned kFlushDenormalBits = 0x8040;  // MXCSR FTZ (bit 15) | DAZ (bit 6)
bool flushing_denormals() { return (_mm_getcsr() & kFlushDenormalBits) != 0; }
class DefaultDenormals {
 public:
  DefaultDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ & ~kFlushDenormalBits); }
  ~DefaultDenormals() { _mm_setcsr(saved_); }
  DefaultDenormals(const DefaultDenormals&) = delete;
  DefaultDenormals& operator=(const DefaultDenormals&) = delete;

 private:
  unsigned saved_;
};
#else
bool flushing_denormals() { return false; }
struct DefaultDenormals {};
#endif

constexpr int kMaxTables = 8;
constexpr int64_t kBuildFactor = 4;
constexpr int64_t kPairsBuildFactor = 8;
constexpr int64_t kTableSize = 65536;

struct Table {
  std::vector<uint16_t> values;          // forward: the bits of f(x)
  std::vector<float> derivatives;        // backward: df/dx in float
  std::vector<float> derivative_pairs;   // backward with a parameter gradient: df/dx, df/dparam per value
};

struct TableKey {
  const RangeKernels* kernels;
  ActivationId activation;
  c10::ScalarType dtype;
  uint32_t param_bits;
  bool backward;
  bool param_grad;
  bool operator==(const TableKey& o) const {
    return kernels == o.kernels && activation == o.activation && dtype == o.dtype && param_bits == o.param_bits &&
           backward == o.backward && param_grad == o.param_grad;
  }
};

std::atomic<int64_t>& lookup_min_numel() {
  static std::atomic<int64_t> numel{int64_t(1) << 18};
  return numel;
}

// Inputs of the backward tables' builds, made on first use and kept: made for each build, their page faults
// cost as much as the math. (With these and the lockstep exp tail, math_primitives.h, a backward table's
// build took 88-104 us against 155-164 before, and a forward table's 76-94 us against 133, in A/B.)
struct TableScratch {
  std::vector<uint16_t> every_value;  // the 65536 bit patterns, in order
  std::vector<float> widened[2];      // every bfloat16 (0) or float16 (1) value in float
  std::vector<float> ones;
};

struct TableCache {
  std::mutex mutex;  // also guards scratch
  std::list<std::pair<TableKey, std::shared_ptr<const Table>>> tables;  // most recently used first
  TableScratch scratch;
};
// A fork() taken while another thread holds the mutex (building a table, say) would leave the child a locked
// mutex that no thread of it will ever unlock: its first table lookup would hang (a DataLoader worker forked by
// a process that trains in another thread). The fork handlers hold it across fork(), so the child gets it
// unlocked and the cache whole. The cache and its handlers are made when the library loads, not on first use
// (whose static guard a fork could leave closed in the child, fork_safe.h).
TableCache table_cache_at_load;
#if !defined(_WIN32)
[[maybe_unused]] const int table_cache_fork_handlers = pthread_atfork(
    [] { table_cache_at_load.mutex.lock(); }, [] { table_cache_at_load.mutex.unlock(); },
    [] { table_cache_at_load.mutex.unlock(); });
#endif

TableCache& table_cache() { return table_cache_at_load; }

// NaN in the entries of the values x where a derivative the table holds (df/dx, and df/dparam with param_grad)
// takes its exp tail: there grad times the derivative at grad = 1 is not the computed kernel's result
// (activations.h, exp_tail). The lookup kernels compute the elements whose entry is NaN (kernels.h), so a table
// gives the computed kernel's bits everywhere. Only the ops with tables (swish, mish) have such a tail.
// Over [begin, end) of the table, in the build's parallel loop.
void mark_exp_tails(ActivationId activation, float param, const float* x, float* entries, bool param_grad,
                    int64_t begin, int64_t end) {
  const int stride = param_grad ? 2 : 1;  // (df/dx, df/dparam) pairs, or df/dx
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  auto mark = [&](auto op) {
    using Op = decltype(op);
    for (int64_t i = begin; i < end; ++i) {  // branch-free, so that it vectorizes
      const bool tail = Op::exp_tail(x[i], param, false) | (param_grad & Op::exp_tail(x[i], param, true));
      for (int k = 0; k < stride; ++k) entries[stride * i + k] = tail ? kNaN : entries[stride * i + k];
    }
  };
  if (activation == ActivationId::Swish) mark(SwishOp{});
  if (activation == ActivationId::Mish) mark(MishOp{});
}

// f (forward) or f' (backward) of the problem's op at every 16-bit value, computed by the kernels k; with the
// cache's mutex held (for its scratch).
std::shared_ptr<Table> build_table(const ElementwiseProblem& p, const RangeKernels& k, float param, bool backward,
                                   TableScratch& scratch) {
  std::vector<uint16_t>& every_value = scratch.every_value;
  if (every_value.empty()) {
    every_value.resize(kTableSize);
    std::iota(every_value.begin(), every_value.end(), uint16_t(0));
  }
  auto table = std::make_shared<Table>();
  ElementwiseProblem build = p;
  build.numel = build.inner = kTableSize;
  build.param = nullptr;
  build.param_scalar = param;
  build.param_grad = nullptr;
  build.stream_out = false;
  auto for_every_value = [&](auto&& fn) {
    at::parallel_for(0, kTableSize, kGrain, [&](int64_t begin, int64_t end) {
      DefaultDenormals environment;
      fn(begin, end);
    });
  };
  if (!backward) {
    table->values.resize(kTableSize + 1);  // + 1: the AVX-512 gathers read 32 bits at the last entry
    build.x = every_value.data();
    build.out = table->values.data();
    for_every_value([&](int64_t begin, int64_t end) { k.forward(build, begin, end); });
    return table;
  }
  // The float backward with grad = 1 on the widened values: the same float math as the 16-bit backward, which
  // then multiplies by grad and rounds once.
  const bool bfloat16 = p.dtype == c10::ScalarType::BFloat16;
  std::vector<float>& x = scratch.widened[bfloat16 ? 0 : 1];
  if (x.empty()) {
    x.resize(kTableSize);
    for (int64_t i = 0; i < kTableSize; ++i) {
      const auto bits = every_value[i];
      x[i] = bfloat16 ? static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()))
                      : static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
    }
  }
  build.dtype = c10::ScalarType::Float;
  build.x = x.data();
  if (p.param_grad == nullptr) {
    scratch.ones.resize(kTableSize, 1.0f);
    build.grad = scratch.ones.data();
    table->derivatives.resize(kTableSize);
    build.out = table->derivatives.data();
    float* entries = table->derivatives.data();
    for_every_value([&](int64_t begin, int64_t end) {
      k.backward(build, begin, end, nullptr, 0);
      mark_exp_tails(p.activation, param, x.data(), entries, /*param_grad=*/false, begin, end);
    });
    return table;
  }
  table->derivative_pairs.resize(2 * kTableSize);  // (df/dx, df/dparam) per value, read with one 64-bit load
  float* pairs = table->derivative_pairs.data();
  for_every_value([&](int64_t begin, int64_t end) {
    k.derivative_pairs(build, begin, end, pairs);
    mark_exp_tails(p.activation, param, x.data(), pairs, /*param_grad=*/true, begin, end);
  });
  return table;
}

std::shared_ptr<const Table> lookup_table(const ElementwiseProblem& p, const RangeKernels& k, bool backward) {
  const bool half_type = p.dtype == c10::ScalarType::BFloat16 || p.dtype == c10::ScalarType::Half;
  const bool long_math = p.activation == ActivationId::Swish || p.activation == ActivationId::Mish;
  const bool param_grad = backward && p.param_grad != nullptr;
  const bool available = !backward ? k.lookup_forward != nullptr
                         : param_grad ? k.lookup_backward_param != nullptr && k.derivative_pairs != nullptr
                                      : k.lookup_backward != nullptr;
  const int64_t min_numel = lookup_min_numel().load(std::memory_order_relaxed);
  if (!available || !half_type || !long_math || p.channels != 1 || p.numel < min_numel || flushing_denormals()) {
    return nullptr;
  }
  // The parameter as the kernel sees it (float for the half types).
  const float param = p.param != nullptr ? *static_cast<const float*>(p.param) : static_cast<float>(p.param_scalar);
  TableKey key{&k, p.activation, p.dtype, 0, backward, param_grad};
  std::memcpy(&key.param_bits, &param, sizeof(param));
  TableCache& cache = table_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  for (auto it = cache.tables.begin(); it != cache.tables.end(); ++it) {
    if (it->first == key) {
      cache.tables.splice(cache.tables.begin(), cache.tables, it);
      return it->second;
    }
  }
  if (p.numel < (param_grad ? kPairsBuildFactor : kBuildFactor) * min_numel) return nullptr;
  cache.tables.emplace_front(key, build_table(p, k, param, backward, cache.scratch));
  if (cache.tables.size() > kMaxTables) cache.tables.pop_back();
  return cache.tables.front().second;
}

// How the AVX-512 builds read the tables (kernels.h): 1 gathers, 0 scalar loads, -1 not timed yet. Gathers are
// fast on some Xeons and slow on those with the GDS ("Downfall") microcode mitigation, which a VM may not
// report; there a gather also waits for the non-temporal stores before it (Ice Lake VM, bfloat16 swish forward
// at 2^24, 2 threads, streamed: 92 ms with gathers, 7.2 with scalar loads; in cache 1.3x). So the active build's
// table forward is timed both ways, once, in both store modes, the better of 5 alternating runs each (~0.2-2
// ms), and gathers are used only where they win both by a margin: scalar loads are never far behind. The buffers
// are 64-byte aligned with y half a page past x, so that no run pays for split or 4K-aliased stores that
// another does not (with plain vectors, one process in three timed the scalar loads 3x slow and chose gathers).
// Either way gives the same bits.
std::atomic<int>& table_gathers_mode() {
  static std::atomic<int> mode{-1};
  return mode;
}

bool gathers_faster(const RangeKernels& k) {
  constexpr int64_t kProbe = 1 << 14, kAlign = 64 / sizeof(uint16_t), kHalfPage = 2048 / sizeof(uint16_t);
  constexpr int64_t kTableSpan = (kTableSize + 1 + kAlign - 1) / kAlign * kAlign;
  constexpr int64_t kXSpan = kProbe + kHalfPage;  // y starts half a page (mod 4096) past x
  std::vector<uint16_t> buffer(kTableSpan + kXSpan + kProbe + kAlign, 0);
  uint16_t* table = buffer.data();
  table += (kAlign - reinterpret_cast<std::uintptr_t>(table) / sizeof(uint16_t) % kAlign) % kAlign;
  uint16_t* x = table + kTableSpan;
  uint16_t* y = x + kXSpan;
  uint32_t state = 2463534242u;
  for (int64_t i = 0; i < kProbe; ++i) {  // xorshift32
    state ^= state << 13, state ^= state >> 17, state ^= state << 5;
    x[i] = static_cast<uint16_t>(state);
  }
  ElementwiseProblem probe{};
  probe.activation = ActivationId::Swish;
  probe.dtype = c10::ScalarType::BFloat16;
  probe.numel = probe.inner = kProbe;
  probe.channels = 1;
  probe.x = x;
  probe.out = y;
  double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}};  // [stream][gather]
  for (int round = 0; round < 5; ++round) {
    for (int stream = 0; stream < 2; ++stream) {
      for (int gather = 0; gather < 2; ++gather) {
        probe.stream_out = stream == 1;
        probe.table_gathers = gather == 1;
        const auto start = std::chrono::steady_clock::now();
        k.lookup_forward(probe, table, 0, kProbe);
        const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
        best[stream][gather] = std::min(best[stream][gather], seconds.count());
      }
    }
  }
  constexpr double kMargin = 0.9;
  return best[0][1] <= kMargin * best[0][0] && best[1][1] <= kMargin * best[1][0];
}

// The table reads for the active build's lookup kernels (only the AVX-512 builds gather).
bool use_table_gathers(const Capability& c) {
  if (std::strncmp(c.name, "avx512", 6) != 0) return false;
  return load_or_compute(table_gathers_mode(), -1, [&] { return gathers_faster(*c.kernels) ? 1 : 0; }) == 1;
}

// piece_backward(begin, end, acc, acc_base): the backward over [begin, end), adding the parameter gradient into
// acc as RangeKernels::backward does.
template <typename acc_t, typename PieceFn>
void backward_with_param_grad(const ElementwiseProblem& p, const PieceFn& piece_backward) {
  const int64_t channels = p.channels;
  auto* param_grad = static_cast<acc_t*>(p.param_grad);
  std::vector<double> total(channels, 0.0);
  if (channels == 1 || p.inner >= kMinRun) {
    // Each piece lies inside one run of `inner` elements, so it touches one channel: one partial each.
    const int64_t rows = p.numel / p.inner;
    const int64_t pieces_per_row = (p.inner + kGrain - 1) / kGrain;
    std::vector<acc_t> partial(rows * pieces_per_row, acc_t(0));
    const int64_t grain = std::max<int64_t>(1, kGrain / std::min(p.inner, kGrain));
    at::parallel_for(0, rows * pieces_per_row, grain, [&](int64_t first, int64_t last) {
      for (int64_t piece = first; piece < last; ++piece) {
        const int64_t row = piece / pieces_per_row;
        const int64_t begin = row * p.inner + (piece % pieces_per_row) * kGrain;
        const int64_t end = std::min(begin + kGrain, (row + 1) * p.inner);
        piece_backward(begin, end, &partial[piece], row % channels);
      }
    });
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t j = 0; j < pieces_per_row; ++j) total[row % channels] += partial[row * pieces_per_row + j];
    }
  } else {
    // Short runs (channels_last has inner == 1): pieces of whole slabs of channels * inner elements, each
    // with a partial per channel.
    const int64_t slab = channels * p.inner;
    const int64_t slabs = p.numel / slab;
    const int64_t slabs_per_piece = std::max<int64_t>(1, kGrain / slab);
    const int64_t pieces = (slabs + slabs_per_piece - 1) / slabs_per_piece;
    std::vector<acc_t> partial(pieces * channels, acc_t(0));
    at::parallel_for(0, pieces, 1, [&](int64_t first, int64_t last) {
      for (int64_t piece = first; piece < last; ++piece) {
        const int64_t begin = piece * slabs_per_piece * slab;
        const int64_t end = std::min(p.numel, begin + slabs_per_piece * slab);
        piece_backward(begin, end, &partial[piece * channels], 0);
      }
    });
    for (int64_t piece = 0; piece < pieces; ++piece) {
      for (int64_t c = 0; c < channels; ++c) total[c] += partial[piece * channels + c];
    }
  }
  for (int64_t c = 0; c < channels; ++c) param_grad[c] = static_cast<acc_t>(total[c]);
}

}  // namespace

std::string capability() { return active()->name; }

std::string set_capability(const std::string& name) {
  const Capability* wanted = find(name);
  std::string known;
  for (const auto& c : kCapabilities) known += std::string(known.empty() ? "" : ", ") + c.name;
  TORCH_CHECK(wanted != nullptr, "fastact.set_cpu_capability: capability must be one of ", known, ", got '",
              name, "'");
  TORCH_CHECK(wanted->supported(), "fastact.set_cpu_capability: this CPU does not support '", name, "'");
  return capability_slot().exchange(wanted)->name;
}

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> names;
  for (const auto& c : kCapabilities) {
    if (c.supported()) names.emplace_back(c.name);
  }
  return names;
}

int64_t streaming_threshold() { return stream_threshold().load(); }

int64_t set_streaming_threshold(int64_t nbytes) {
  TORCH_CHECK(nbytes >= 0, "fastact.set_cpu_streaming_threshold: nbytes must be >= 0, got ", nbytes);
  return stream_threshold().exchange(nbytes);
}

int64_t lookup_threshold() { return lookup_min_numel().load(); }

int64_t set_lookup_threshold(int64_t numel) {
  TORCH_CHECK(numel >= 0, "fastact.set_cpu_lookup_threshold: numel must be >= 0, got ", numel);
  return lookup_min_numel().exchange(numel);
}

bool table_gathers() {  // for the AVX-512 build, the active one or, if another is active, the first
  const Capability* c = active();
  if (std::strncmp(c->name, "avx512", 6) != 0) c = find("avx512");
  return c != nullptr && c->supported() && use_table_gathers(*c);
}

bool set_table_gathers(bool enabled) {
  const bool previous = table_gathers();
  table_gathers_mode().store(enabled ? 1 : 0);
  return previous;
}

int64_t lookup_tables_cached() {
  std::lock_guard<std::mutex> lock(table_cache().mutex);
  return static_cast<int64_t>(table_cache().tables.size());
}

void forward(const ElementwiseProblem& problem) {
  ElementwiseProblem p = problem;
  p.stream_out = should_stream(p, 2);
  p.params_nonzero = params_nonzero(p);
  p.params_at_most_one = params_at_most_one(p);
  const RangeKernels& k = *active()->kernels;
  if (const auto table = lookup_table(p, k, /*backward=*/false)) {
    p.table_gathers = use_table_gathers(*active());
    at::parallel_for(0, p.numel, kGrain, [&](int64_t begin, int64_t end) {
      k.lookup_forward(p, table->values.data(), begin, end);
    });
    return;
  }
  at::parallel_for(0, p.numel, kGrain, [&](int64_t begin, int64_t end) { k.forward(p, begin, end); });
}

void backward(const ElementwiseProblem& problem) {
  ElementwiseProblem p = problem;
  p.stream_out = should_stream(p, 3);
  p.params_nonzero = params_nonzero(p);
  const RangeKernels& k = *active()->kernels;
  if (p.param_grad == nullptr) {
    const auto table = lookup_table(p, k, /*backward=*/true);
    if (table) p.table_gathers = use_table_gathers(*active());
    at::parallel_for(0, p.numel, kGrain, [&](int64_t begin, int64_t end) {
      if (table) {
        k.lookup_backward(p, table->derivatives.data(), begin, end);
      } else {
        k.backward(p, begin, end, nullptr, 0);
      }
    });
    return;
  }
  auto computed = [&](int64_t begin, int64_t end, void* acc, int64_t acc_base) {
    k.backward(p, begin, end, acc, acc_base);
  };
  if (p.dtype == c10::ScalarType::Double) return backward_with_param_grad<double>(p, computed);
  if (const auto table = lookup_table(p, k, /*backward=*/true)) {  // one channel: acc_base is 0
    p.table_gathers = use_table_gathers(*active());
    return backward_with_param_grad<float>(p, [&](int64_t begin, int64_t end, float* acc, int64_t) {
      k.lookup_backward_param(p, table->derivative_pairs.data(), begin, end, acc);
    });
  }
  backward_with_param_grad<float>(p, computed);
}

void forward_with_sign_mask(const ElementwiseProblem& problem, uint8_t* mask) {
  ElementwiseProblem p = problem;
  p.stream_out = should_stream(p, 2);
  p.params_nonzero = params_nonzero(p);
  p.params_at_most_one = params_at_most_one(p);
  const RangeKernels& k = *active()->kernels;
  const int64_t units = (p.numel + kSignMaskUnit - 1) / kSignMaskUnit;
  at::parallel_for(0, units, kGrain / kSignMaskUnit, [&](int64_t first, int64_t last) {
    k.forward_with_sign_mask(p, mask, first * kSignMaskUnit, std::min(p.numel, last * kSignMaskUnit));
  });
}

void backward_from_sign_mask(const ElementwiseProblem& problem, const uint8_t* mask) {
  ElementwiseProblem p = problem;
  // (the ranges start 64-byte aligned from the output's start, which ops.cpp allocates)
  p.stream_out = should_stream(p, 2) && reinterpret_cast<std::uintptr_t>(p.out) % 64 == 0;
  const RangeKernels& k = *active()->kernels;
  const int64_t units = (p.numel + kSignMaskUnit - 1) / kSignMaskUnit;
  at::parallel_for(0, units, kGrain / kSignMaskUnit, [&](int64_t first, int64_t last) {
    k.backward_from_sign_mask(p, mask, first * kSignMaskUnit, std::min(p.numel, last * kSignMaskUnit));
  });
}

}  // namespace fastact::cpu
