// fastact's AVX-512 CPU kernels on a CPU without AVX-512 (run_check.py builds this): the AVX-512 build, its
// intrinsics emulated (emulation.h), against the AVX2 build run natively; then the AVX512-BF16 build, emulated
// too, against the AVX-512 build. Every op, dtype, parameter (scalar, per channel, zero, negative, above 1),
// layout (runs across channels, per-channel runs of 7 to 20000, channels_last), edge values (0, -0,
// subnormals, +-inf, NaN, the fast paths' bounds), outputs 0-5 elements past alignment, streamed and not,
// ranges cut where threads would cut them, the parameter gradient's partial sums, and the 16-bit lookup
// tables (built from all 65536 values; the lookup kernels against the computed ones).
//
// What must agree: AVX512-BF16 with AVX-512 bitwise (NaN: any NaN). AVX-512 with AVX2: bitwise, or within the
// rounding that contraction into FMAs moves (the compilers contract the two builds' code differently): 8 ulps,
// or for a backward 16 eps * |g| (1 + |x| max(1, |param|)), the size of the terms that cancel near a zero of
// f'; 16-bit results one ulp. Parameter-gradient sums, added in another order, to 1e-5 of sum |g x^2|.
// Prints the first mismatches and a summary per pair, with the kinds of results that agreed only within
// tolerance; exits 1 on any mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/capability.h"

using fastact::ActivationId;
using fastact::ElementwiseProblem;
using fastact::cpu::RangeKernels;
// The pair compared: base (run natively, or the emulated AVX-512 build) and test (emulated).
static const RangeKernels* g_base = nullptr;
static const RangeKernels* g_test = nullptr;
static bool g_bitwise = false;  // whether finite results must have the same bits
static int64_t g_inexact = 0;   // elements that agree within tolerance but not bitwise
static double g_max_ulps = 0;
static std::map<std::string, int64_t> g_inexact_kinds;  // where results agree within tolerance only

static int64_t g_checked = 0, g_failed = 0;
static std::mt19937_64 g_rng(12345);

template <typename T> constexpr c10::ScalarType dtype_of();
template <> constexpr c10::ScalarType dtype_of<float>() { return c10::ScalarType::Float; }
template <> constexpr c10::ScalarType dtype_of<double>() { return c10::ScalarType::Double; }
template <> constexpr c10::ScalarType dtype_of<c10::BFloat16>() { return c10::ScalarType::BFloat16; }
template <> constexpr c10::ScalarType dtype_of<c10::Half>() { return c10::ScalarType::Half; }
template <typename T> const char* name_of() {
  return std::is_same_v<T, float> ? "float32" : std::is_same_v<T, double> ? "float64"
       : std::is_same_v<T, c10::BFloat16> ? "bfloat16" : "float16";
}
template <typename T> using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
bool same(T a, T b) {
  const double da = static_cast<double>(a), db = static_cast<double>(b);
  if (std::isnan(da) || std::isnan(db)) return std::isnan(da) && std::isnan(db);
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Normal data at a few scales, with edge values sprinkled in.
template <typename T>
std::vector<T> make_input(int64_t n, double scale) {
  using A = acc_of<T>;
  const A inf = std::numeric_limits<A>::infinity();
  const std::vector<A> edges = {0, -A(0), inf, -inf, std::numeric_limits<A>::quiet_NaN(),
                                std::numeric_limits<A>::denorm_min(), -std::numeric_limits<A>::denorm_min(),
                                A(1e-30), A(-1e-30), A(1e-40), std::numeric_limits<A>::max(),
                                -std::numeric_limits<A>::max(), A(87), A(-87), A(87.5), A(-87.5), A(88.8), A(-88.8),
                                A(42), A(-42), A(44), A(-44), A(1e5), A(-1e5), A(700), A(-700), A(750), A(-750),
                                A(20), A(-20), A(9), A(-9), A(1), A(-1)};
  std::normal_distribution<double> normal(0.0, scale);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<T> x(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = pick(g_rng) < 6 ? T(edges[g_rng() % edges.size()]) : T(static_cast<A>(normal(g_rng)));
  }
  return x;
}

struct Layout {
  int64_t outer, channels, inner;
  int64_t numel() const { return outer * channels * inner; }
};

template <typename T>
struct Problem {
  using A = acc_of<T>;
  Layout layout;
  std::vector<T> x, g;
  std::vector<A> params;  // per channel, or empty for a scalar parameter
  double scalar = 0;
  ElementwiseProblem base(ActivationId id) const {
    ElementwiseProblem p{};
    p.activation = id;
    p.dtype = dtype_of<T>();
    p.numel = layout.numel();
    p.channels = params.empty() ? 1 : layout.channels;
    p.inner = params.empty() ? p.numel : layout.inner;
    p.x = x.data();
    p.grad = g.data();
    p.param = params.empty() ? nullptr : params.data();
    p.param_scalar = scalar;
    // as cpu::forward and cpu::backward set them
    bool nonzero = true, at_most_one = true;
    if (params.empty()) {
      nonzero = static_cast<A>(scalar) != 0;
      at_most_one = static_cast<A>(scalar) <= 1;
    }
    for (A v : params) {
      nonzero = nonzero && v != 0;
      at_most_one = at_most_one && v <= 1;
    }
    p.params_nonzero = nonzero;
    p.params_at_most_one = at_most_one;
    return p;
  }
};

// Pieces of [0, n) as threads see them: a few random cut points.
std::vector<int64_t> cuts(int64_t n, int pieces) {
  std::vector<int64_t> c = {0, n};
  for (int i = 1; i < pieces && n > 1; ++i) c.push_back(1 + static_cast<int64_t>(g_rng() % (n - 1)));
  std::sort(c.begin(), c.end());
  c.erase(std::unique(c.begin(), c.end()), c.end());
  return c;
}

// An output buffer whose data starts `offset` elements past a 64-byte boundary, with guard bytes around it that
// a kernel must leave alone.
template <typename T>
struct Output {
  static constexpr unsigned char kGuard = 0xa5;
  std::vector<T> storage;
  T* data;
  int64_t n;
  Output(int64_t n_, int offset) : storage(n_ + 128 + offset), n(n_) {
    std::memset(static_cast<void*>(storage.data()), kGuard, storage.size() * sizeof(T));
    auto address = reinterpret_cast<std::uintptr_t>(storage.data() + 32);
    data = reinterpret_cast<T*>((address + 63) & ~std::uintptr_t(63)) + offset;
  }
  // Whether every byte outside data[0, n) still holds the guard.
  bool guards_intact() const {
    const auto* begin = reinterpret_cast<const unsigned char*>(storage.data());
    const auto* end = begin + storage.size() * sizeof(T);
    const auto* first = reinterpret_cast<const unsigned char*>(data);
    const auto* last = reinterpret_cast<const unsigned char*>(data + n);
    return std::all_of(begin, first, [](unsigned char c) { return c == kGuard; }) &&
           std::all_of(last, end, [](unsigned char c) { return c == kGuard; });
  }
};

template <typename T>
void check_guards(const std::string& what, const Output<T>& a, const Output<T>& b) {
  for (const Output<T>* o : {&a, &b}) {
    if (!o->guards_intact()) {
      if (g_failed < 40) std::printf("MISMATCH %s: the %s build wrote outside its output\n", what.c_str(), o == &a ? "base" : "test");
      ++g_failed;
    }
  }
}

template <typename T>
double ulps_apart(T a, T b);

template <typename T>
void report(const std::string& what, int64_t i, T expected, T got) {
  if (g_failed < 40) {
    std::printf("MISMATCH %s at %lld: base %.17g, test %.17g (%.3g ulps)\n", what.c_str(), static_cast<long long>(i),
                static_cast<double>(expected), static_cast<double>(got), ulps_apart(expected, got));
  }
  ++g_failed;
}

// Distance in units of the last place of T (subnormals: of the smallest subnormal).
template <typename T>
double ulps_apart(T a, T b) {
  const double da = static_cast<double>(a), db = static_cast<double>(b);
  if (std::isinf(da) || std::isinf(db)) return da == db ? 0 : 1e30;
  const double big = std::max(std::fabs(da), std::fabs(db));
  double ulp;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    ulp = std::max<double>(std::nextafter(static_cast<T>(big), std::numeric_limits<T>::infinity()) - static_cast<T>(big),
                           std::numeric_limits<T>::denorm_min());
  } else {
    const T t = static_cast<T>(big);
    uint16_t bits;
    std::memcpy(&bits, &t, 2);
    ++bits;
    T next;
    std::memcpy(&next, &bits, 2);
    ulp = static_cast<double>(next) - static_cast<double>(t);
  }
  return std::fabs(da - db) / ulp;
}

// For a backward, `scale` bounds the terms of g * f'(x) that may cancel (|g| (1 + |x|)): near a zero of f'
// both builds' results have an absolute error of rounding size against it, however many ulps of the result.
template <typename T>
bool close(T a, T b, double scale) {
  if (same(a, b)) return true;
  if (g_bitwise) return false;
  const double u = ulps_apart(a, b);
  ++g_inexact;
  // float32/float64: contraction into FMAs differs between builds; 16-bit: one rounding may go the other way
  constexpr bool wide = std::is_same_v<T, float> || std::is_same_v<T, double>;
  const double eps = std::is_same_v<T, double> ? 0x1p-52 : 0x1p-23;
  if (std::fabs(static_cast<double>(a) - static_cast<double>(b)) <= 16 * eps * scale) return true;
  g_max_ulps = std::max(g_max_ulps, u);
  return u <= (wide ? 8.0 : 1.0);
}

template <typename T>
void compare(const std::string& what, const T* a, const T* b, int64_t n, const T* x = nullptr,
             const T* g = nullptr, double param = 0) {
  int64_t bad = 0;
  const int64_t inexact_before = g_inexact;
  for (int64_t i = 0; i < n; ++i) {
    double scale = 0;
    if (x && g && std::isfinite(static_cast<double>(x[i]))) {
      scale = std::fabs(static_cast<double>(g[i])) * (1 + std::fabs(static_cast<double>(x[i])) * std::max(1.0, std::fabs(param)));
    }
    if (!close(a[i], b[i], scale)) {
      if (bad++ < 3) report(what, i, a[i], b[i]); else ++g_failed;
    }
  }
  ++g_checked;
  if (g_inexact > inexact_before) {
    // the op, dtype and pass, without the case's parameter and layout
    std::string kind = what.substr(0, what.find(" param"));
    const auto pass = what.rfind("param grad") != std::string::npos ? std::string(" param grad")
                    : what.find("backward") != std::string::npos ? std::string(" backward") : std::string(" forward");
    g_inexact_kinds[kind + (what.find("table") != std::string::npos ? " table" : "") + pass] += g_inexact - inexact_before;
  }
}

template <typename A>
void compare_sums(const std::string& what, const std::vector<A>& a, const std::vector<A>& b, double magnitude) {
  for (size_t i = 0; i < a.size(); ++i) {
    const double tol = 1e-5 * magnitude + 1e-30;
    if (a[i] != b[i] && !(std::fabs(double(a[i]) - double(b[i])) <= tol) && !(std::isnan(double(a[i])) && std::isnan(double(b[i])))) {
      report(what + " (sum)", static_cast<int64_t>(i), a[i], b[i]);
    }
  }
  ++g_checked;
}

template <typename T>
std::string label(const char* op, double param, bool per_channel, const Layout& l, int offset, bool stream) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s %s param %s%g [%lld,%lld,%lld] out+%d%s", op, name_of<T>(),
                per_channel ? "per-channel ~" : "", param, static_cast<long long>(l.outer),
                static_cast<long long>(l.channels), static_cast<long long>(l.inner), offset, stream ? " streamed" : "");
  return buf;
}

template <typename T>
void check_case(ActivationId id, const char* op, double param, bool per_channel, Layout layout, int offset,
                bool stream, double scale) {
  using A = acc_of<T>;
  Problem<T> pr;
  pr.layout = layout;
  const int64_t n = layout.numel();
  pr.x = make_input<T>(n, scale);
  pr.g = make_input<T>(n, 2.0);
  for (auto& v : pr.g) if (std::isnan(static_cast<double>(v)) || std::isinf(static_cast<double>(v))) v = T(1.5);
  pr.scalar = param;
  if (per_channel) {
    for (int64_t c = 0; c < layout.channels; ++c) pr.params.push_back(static_cast<A>(param + 0.1 * (c % 7) - 0.3));
  }
  const std::string what = label<T>(op, param, per_channel, layout, offset, stream);
  const auto pieces = cuts(n, 3);

  // forward
  Output<T> ya(n, offset), yb(n, offset);
  for (int side = 0; side < 2; ++side) {
    ElementwiseProblem p = pr.base(id);
    p.out = side ? static_cast<void*>(yb.data) : ya.data;
    p.stream_out = stream;
    const RangeKernels& k = side ? *g_test : *g_base;
    for (size_t i = 0; i + 1 < pieces.size(); ++i) k.forward(p, pieces[i], pieces[i + 1]);
  }
  compare(what + " forward", ya.data, yb.data, n);
  check_guards(what + " forward", ya, yb);

  // backward, with the parameter gradient where the op has a parameter: partial sums as dispatch.cpp makes
  // them (one per run for runs of several elements, one per channel over whole slabs for inner == 1)
  const bool has_param = id != ActivationId::Mish;
  for (int with_grad = 0; with_grad <= (has_param ? 1 : 0); ++with_grad) {
    Output<T> ga(n, offset), gb(n, offset);
    std::vector<A> acc_a, acc_b;
    double magnitude = 0;
    for (int side = 0; side < 2; ++side) {
      ElementwiseProblem p = pr.base(id);
      p.out = side ? static_cast<void*>(gb.data) : ga.data;
      p.stream_out = stream;
      const RangeKernels& k = side ? *g_test : *g_base;
      std::vector<A>& acc = side ? acc_b : acc_a;
      if (!with_grad) {
        for (size_t i = 0; i + 1 < pieces.size(); ++i) k.backward(p, pieces[i], pieces[i + 1], nullptr, 0);
        continue;
      }
      p.param_grad = &acc;  // (only tested against null by the kernels)
      if (p.channels > 1 && p.inner == 1) {
        acc.assign(p.channels, A(0));
        k.backward(p, 0, n, acc.data(), 0);
      } else {
        const int64_t rows = n / p.inner;
        acc.assign(rows, A(0));
        for (int64_t r = 0; r < rows; ++r) k.backward(p, r * p.inner, (r + 1) * p.inner, &acc[r], r % p.channels);
      }
    }
    for (size_t i = 0; i < pr.x.size(); ++i) {
      const double xi = static_cast<double>(pr.x[i]);
      if (std::isfinite(xi)) magnitude += std::fabs(xi * xi * static_cast<double>(pr.g[i]));
    }
    compare(what + (with_grad ? " backward+param grad" : " backward"), ga.data, gb.data, n, pr.x.data(), pr.g.data(),
            std::fabs(param) + 0.5);
    check_guards(what + " backward", ga, gb);
    if (with_grad) compare_sums(what + " param grad", acc_a, acc_b, std::max(1.0, magnitude));
  }
}

// A problem over n elements with one parameter value, as dispatch.cpp makes them for the lookup tables.
template <typename T>
ElementwiseProblem one_param_problem(ActivationId id, double param, int64_t n) {
  ElementwiseProblem p{};
  p.activation = id;
  p.dtype = dtype_of<T>();
  p.numel = p.inner = n;
  p.channels = 1;
  p.param_scalar = param;
  p.params_nonzero = static_cast<float>(param) != 0;
  p.params_at_most_one = static_cast<float>(param) <= 1;
  return p;
}

// The 16-bit lookup tables: built by each build from every value as dispatch.cpp builds them, compared
// bitwise, and the emulated build's lookup kernels against its computed kernels on data.
template <typename T>
void check_tables(ActivationId id, const char* op, double param) {
  constexpr int64_t kTable = 65536;
  std::vector<uint16_t> every(kTable);
  for (int64_t i = 0; i < kTable; ++i) every[i] = static_cast<uint16_t>(i);
  std::vector<float> widened(kTable), ones(kTable, 1.0f);
  for (int64_t i = 0; i < kTable; ++i) {
    T v;
    std::memcpy(&v, &every[i], 2);
    widened[i] = static_cast<float>(v);
  }
  char buf[100];
  std::snprintf(buf, sizeof buf, "%s %s param %g table", op, name_of<T>(), param);
  const std::string what = buf;
  std::vector<T> values[2];
  std::vector<float> derivatives[2], pairs[2];
  for (int side = 0; side < 2; ++side) {
    const RangeKernels& k = side ? *g_test : *g_base;
    ElementwiseProblem p = one_param_problem<T>(id, param, kTable);
    p.x = every.data();
    values[side].assign(kTable + 1, T(0));
    p.out = values[side].data();
    k.forward(p, 0, kTable);
    p.dtype = c10::ScalarType::Float;
    p.x = widened.data();
    p.grad = ones.data();
    derivatives[side].assign(kTable, 0.0f);
    p.out = derivatives[side].data();
    k.backward(p, 0, kTable, nullptr, 0);
    pairs[side].assign(2 * kTable, 0.0f);
    k.derivative_pairs(p, 0, kTable, pairs[side].data());
  }
  compare(what + " values", values[0].data(), values[1].data(), kTable);
  compare(what + " derivatives", derivatives[0].data(), derivatives[1].data(), kTable);
  compare(what + " derivative pairs", pairs[0].data(), pairs[1].data(), 2 * kTable);

  // the emulated build's lookups against its own computed kernels (the bits the tables promise)
  const RangeKernels& k = *g_test;
  if (k.lookup_forward == nullptr) return;
  for (int reads = 0; reads < 4; ++reads) {  // AVX-512 gathers (true) or scalar loads (kernels.h, "GDS")
    const int offset = (reads & 1) * 3;
    const bool gathers = reads < 2;
    for (bool stream : {false, true}) {
      const int64_t n = 5000 + offset;
      const auto x = make_input<T>(n, 4.0);
      auto g = make_input<T>(n, 2.0);
      for (auto& v : g) if (!std::isfinite(static_cast<double>(v))) v = T(0.75);
      ElementwiseProblem p = one_param_problem<T>(id, param, n);
      p.x = x.data();
      p.grad = g.data();
      p.stream_out = stream;
      p.table_gathers = gathers;
      Output<T> computed(n, offset), looked_up(n, offset);
      const std::string sub = what + (gathers ? " gathers" : " loads") + (stream ? " streamed" : "") + " out+" +
                              std::to_string(offset);
      p.out = computed.data;
      k.forward(p, 0, n);
      p.out = looked_up.data;
      k.lookup_forward(p, reinterpret_cast<const uint16_t*>(values[1].data()), 0, n);
      compare(sub + " lookup forward", computed.data, looked_up.data, n);
      check_guards(sub + " lookup forward", computed, looked_up);
      p.out = computed.data;
      k.backward(p, 0, n, nullptr, 0);
      p.out = looked_up.data;
      k.lookup_backward(p, derivatives[1].data(), 0, n);
      compare(sub + " lookup backward", computed.data, looked_up.data, n);
      if (id == ActivationId::Swish) {
        std::vector<float> acc_computed(1, 0.0f), acc_looked_up(1, 0.0f);
        p.out = computed.data;
        k.backward(p, 0, n, acc_computed.data(), 0);
        p.out = looked_up.data;
        k.lookup_backward_param(p, pairs[1].data(), 0, n, acc_looked_up.data());
        compare(sub + " lookup backward+param grad", computed.data, looked_up.data, n);
        compare(sub + " lookup param grad", acc_computed.data(), acc_looked_up.data(), 1);
        check_guards(sub + " lookup backward", computed, looked_up);
      }
    }
  }
}

template <typename T>
void check_dtype() {
  const Layout layouts[] = {{1, 1, 1}, {1, 1, 31}, {1, 1, 4099}, {3, 5, 1}, {2, 64, 1}, {4, 3, 7}, {2, 8, 100},
                            {2, 3, 1000}, {1, 2, 20000}};
  struct OpCase { ActivationId id; const char* name; std::vector<double> params; };
  const OpCase ops[] = {{ActivationId::Swish, "swish", {1.0, 1.3, -0.7, 0.0, 2.5}},
                        {ActivationId::Mish, "mish", {0.0}},
                        {ActivationId::Leaky, "leaky", {0.5, -0.5, 0.0, 1.0, 2.0, 0.01}}};
  for (const auto& op : ops) {
    for (double param : op.params) {
      for (bool per_channel : {false, true}) {
        if (per_channel && op.id == ActivationId::Mish) continue;
        for (const auto& layout : layouts) {
          for (int offset : {0, 1, 5}) {
            for (bool stream : {false, true}) {
              check_case<T>(op.id, op.name, param, per_channel, layout, offset, stream, 4.0);
            }
          }
          check_case<T>(op.id, op.name, param, per_channel, layout, 0, false, 60.0);
        }
      }
      if constexpr (std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>) {
        if (op.id != ActivationId::Leaky) check_tables<T>(op.id, op.name, param);
      }
    }
  }
}

void check_all() {
  check_dtype<float>();
  check_dtype<double>();
  check_dtype<c10::BFloat16>();
  check_dtype<c10::Half>();
}

int main() {
  int64_t failed = 0;
  struct Pair { const char* name; const RangeKernels* base; const RangeKernels* test; bool bitwise; };
  const Pair pairs[] = {
      {"avx512 (emulated) against avx2 (native)", &fastact::cpu::AVX2::kRangeKernels,
       &fastact::cpu::AVX512::kRangeKernels, false},
      {"avx512_bf16 (emulated) against avx512 (emulated), bitwise", &fastact::cpu::AVX512::kRangeKernels,
       &fastact::cpu::AVX512_BF16::kRangeKernels, true}};
  for (const Pair& pair : pairs) {
    g_base = pair.base;
    g_test = pair.test;
    g_bitwise = pair.bitwise;
    g_checked = g_failed = g_inexact = 0;
    g_max_ulps = 0;
    g_rng.seed(12345);
    check_all();
    std::printf("%s: %lld comparisons, %lld elements apart (%lld within tolerance, at most %.3g ulps)\n",
                pair.name, static_cast<long long>(g_checked), static_cast<long long>(g_failed),
                static_cast<long long>(g_inexact), g_max_ulps);
    for (const auto& [kind, count] : g_inexact_kinds) std::printf("  not bitwise: %s: %lld\n", kind.c_str(), static_cast<long long>(count));
    g_inexact_kinds.clear();
    failed += g_failed;
  }
  return failed ? 1 : 0;
}
