// The math of every fastact activation, written once for every device.
//
// Each functor is a struct with two static templates over T, where T is a scalar (float or double, on the
// host or in a CUDA kernel) or a VecPack<float|double, N> (math_primitives.h: N at::vec::Vectorized computed in
// lockstep, the CPU SIMD path):
//
//   T forward(T x, T p)                          -> f(x; p)
//   void backward(T g, T x, T p, T& gx, T& gp)   -> gx = g * df/dx,  gp = g * df/dp
//
// p is the activation's parameter (beta, alpha); an activation without one ignores it. Half types are
// always computed in float (at::opmath_type). The formulas are arranged so that no intermediate
// overflows, nothing cancels in the tails, and +-inf inputs give the mathematical limit rather than
// inf * 0 = NaN; NaN inputs propagate.
//
// Adding an activation: a functor here and the other steps listed in README.md ("Layout").
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "math_primitives.h"

// The anonymous namespace is deliberate: this header is compiled into several CPU translation units with
// different instruction sets (AVX2, AVX-512, baseline). Internal linkage keeps the linker from merging an
// AVX-512 instantiation into the baseline build.
namespace fastact {
namespace {

// Swish-beta: f = x * sigmoid(beta x); beta = 1 is SiLU.
struct SwishOp {
  // sigmoid(z), sigmoid(z) * (1 - sigmoid(z)) from a single exp(-|z|), without overflow. With
  // q = sigmoid(-|z|) = e / (1 + e) <= 1/2, sigmoid(z) is 1 - q for z >= 0 and q otherwise.
  // e = exp(-|z|).
  template <typename T>
  FASTACT_HOST_DEVICE static void sigmoid_parts(T z, T e, T& s, T& ds) {
    const T q = e / (T(1) + e);
    const T one_minus_q = T(1) - q;
    s = fa_select_negative(z, q, one_minus_q);  // at z = +-0, q = 1 - q = 1/2
    ds = q * one_minus_q;
  }

  // sigmoid(z) alone (the forward's need), from e = exp(-|z|): 1 / (1 + e) for z >= 0, e / (1 + e) otherwise.
  // Picking the numerator before the division leaves the division last in the chain, with one rounding after.
  template <typename T>
  FASTACT_HOST_DEVICE static T sigmoid(T z, T e) {
    return fa_select_negative(z, e, T(1)) / (T(1) + e);  // at z = +-0, e = 1
  }

  template <typename T>
  FASTACT_HOST_DEVICE static T scaled_input(T x, T beta) {
    // beta = 0 makes f = x / 2 exactly, also at x = +-inf (where beta * x would be NaN).
    return fa_select(beta == T(0), T(0), beta * x);
  }

  // f from x and z = beta x.
  template <typename T>
  FASTACT_HOST_DEVICE static T forward_scaled(T x, T z) {
    if constexpr (fa_is_float_pack<T>::value) {
      if (fa_exp_is_moderate(fa_neg_abs(z))) return forward_moderate(x, z);
      return fa_call_cold([x, z] { return forward_scaled_general(x, z); });
    } else {
      return forward_scaled_general(x, z);
    }
  }
  template <typename T>
  FASTACT_HOST_DEVICE static T forward_scaled_general(T x, T z) {
    // where e = exp(z) is subnormal, f = x e (math_primitives.h)
    T f = fa_select_exp_tail(z, T(1), x, T(1), x * sigmoid(z, fa_exp_nonpositive_normal(fa_neg_abs(z))));
    // z = -inf: x * 0 would be NaN for x = +-inf; the limit is 0, with x's sign (as x * sigmoid(z) has).
    f = fa_select(z == fa_neg(fa_inf<T>()), fa_select_negative(x, fa_neg(T(0)), T(0)), f);
    if constexpr (fa_is_float_pack<T>::value) {  // the lanes the fast path covers get its bits
      return fa_select(fa_abs(z) <= T(87), forward_moderate(x, fa_clamp(z, -87.0f, 87.0f)), f);
    }
    return f;
  }

  // The CPU forward's fast path, float packs with |z| <= 87 in every lane (all data but the far tails): there
  // E = exp(-z) cannot overflow, and f = x / (1 + E) is one division, with no select on z's sign, where
  // x * sigmoid(z) is a division and a product. forward_scaled_general gives a pack's lanes in that range these
  // same bits, so that no lane depends on its neighbours. (The backward keeps sigmoid_parts: s (1 - s) from
  // 1 / (1 + E) measured 0.1-0.2 ulp worse on average, for 5% less time.)
  template <typename T>
  FASTACT_HOST_DEVICE static T forward_moderate(T x, T z) {
    return x / (T(1) + fa_exp_moderate_signed<-1>(z));
  }

  template <typename T>
  FASTACT_HOST_DEVICE static T forward(T x, T beta) {
    return forward_scaled(x, scaled_input(x, beta));
  }

  // The forms where beta != 0, which the kernels switch to when no beta of the call is zero: beta x needs
  // no guard then.
  struct NonzeroParam {
    template <typename T>
    FASTACT_HOST_DEVICE static T forward(T x, T beta) {
      return forward_scaled(x, beta * x);
    }
    template <typename T>
    FASTACT_HOST_DEVICE static void backward(T g, T x, T beta, T& gx, T& gbeta) {
      backward_scaled(g, x, beta * x, gx, gbeta);
    }
  };

  template <typename T>
  FASTACT_HOST_DEVICE static void backward(T g, T x, T beta, T& gx, T& gbeta) {
    backward_scaled(g, x, scaled_input(x, beta), gx, gbeta);
  }

  // Where g df/dx (input) and g df/dbeta (param) take their exp tails (fa_select_exp_tail, which puts g inside
  // its product), they are not g times their values at g = 1: the 16-bit lookup tables of derivatives leave
  // those x to the computed kernel (cpu/dispatch.cpp). z < -87 and |z| > 87 in float.
  template <typename T>
  FASTACT_HOST_DEVICE static bool exp_tail(T x, T beta, bool param) {
    const T z = scaled_input(x, beta);
    return fa_exp_is_subnormal(param ? fa_neg_abs(z) : z);
  }

  // The gradients from g, x and z = beta x: df/dx = s + z s (1 - s); df/dbeta = x^2 s (1 - s), written
  // x * (x * ds) so that x^2 cannot overflow.
  template <typename T>
  FASTACT_HOST_DEVICE static void backward_scaled(T g, T x, T z, T& gx, T& gbeta) {
    const T u = fa_neg_abs(z);
    if constexpr (fa_is_float_pack<T>::value) {
      if (fa_exp_is_moderate(u)) {  // z finite in every lane
        T s;
        backward_terms(g, x, z, fa_exp_moderate(u), gx, gbeta, s);
        return;
      }
      // by value both ways: a reference to gx would keep it in memory in the hot path too
      const auto [cold_gx, cold_gbeta] = fa_call_cold([g, x, z] {
        T gx_, gbeta_;
        backward_scaled_general(g, x, z, fa_neg_abs(z), gx_, gbeta_);
        return std::pair<T, T>(gx_, gbeta_);
      });
      gx = cold_gx;
      gbeta = cold_gbeta;
    } else {
      backward_scaled_general(g, x, z, u, gx, gbeta);
    }
  }
  // The same expressions in both paths, so that a finite lane gets the same bits (and the same FMA
  // contraction) whichever path its pack takes; the general path then fixes the infinite lanes.
  template <typename T>
  FASTACT_HOST_DEVICE static void backward_terms(T g, T x, T z, T e, T& gx, T& gbeta, T& s) {
    T ds;
    sigmoid_parts(z, e, s, ds);
    gx = g * (s + z * ds);
    gbeta = g * (x * (x * ds));
  }
  template <typename T>
  FASTACT_HOST_DEVICE static void backward_scaled_general(T g, T x, T z, T u, T& gx, T& gbeta) {
    T s;
    backward_terms(g, x, z, fa_exp_nonpositive_normal(u), gx, gbeta, s);
    // where e = exp(u) = exp(-|z|) is subnormal, df/dbeta = x^2 e for either sign of z, and for z < 0
    // df/dx = (1 + z) e (math_primitives.h; for z > 0, df/dx = 1 + (z - 1) e rounds to 1 there)
    gx = fa_select_exp_tail(z, g, T(1), T(1) + z, gx);
    gbeta = fa_select_exp_tail(u, g, x, x, gbeta);
    // z = +-inf: z s (1 - s) and x^2 s (1 - s) are inf * 0 there; their limit is 0
    const auto z_inf = fa_abs(z) == fa_inf<T>();
    gx = fa_select(z_inf, g * s, gx);
    gbeta = fa_select(z_inf, g * T(0), gbeta);
  }
};

// Mish: f = x * tanh(softplus(x)). With e = exp(-|x|) (one exp per element), tanh(softplus(x)) = t:
//   x >= 0: t = 1 - m / den,   m = 2e^2,       den = 1 + 2e + 2e^2
//   x <  0: t = m / den,       m = e^2 + 2e,   den = e^2 + 2e + 2
// Both forms are free of overflow and cancellation (m / den <= 1/2 for x >= 0, and t = 1 exactly where
// e = 0); the derivative's second term, x sigmoid(x) sech^2(softplus(x)) = 4 x e (1 + e) w / den^2 with
// w = (x >= 0 ? e : 1), is exact too.
struct MishOp {
  // As SwishOp::exp_tail: g df/dx takes its tail where x < -87.
  template <typename T>
  FASTACT_HOST_DEVICE static bool exp_tail(T x, T /*unused*/, bool /*param: none*/) {
    return fa_exp_is_subnormal(x);
  }

  // e = exp(-|x|).
  template <typename T>
  FASTACT_HOST_DEVICE static void parts(T x, T e, T& m, T& den) {
    const T e_small = fa_tiny_as_zero(e);  // e^2 is added to 2e or to 1
    const T e2 = e_small * e_small;
    m = fa_select_negative(x, e2 + T(2) * e, T(2) * e2);
    den = fa_select_negative(x, e2 + T(2) * e + T(2), T(1) + T(2) * e + T(2) * e2);
  }

  template <typename T>
  FASTACT_HOST_DEVICE static T tanh_softplus(T x, T m_over_den) {
    return fa_select_negative(x, m_over_den, T(1) - m_over_den);
  }

  // The forward divides the other way round, t = (den - m) / den, with den - m = 1 + 2e (x >= 0) or
  // e^2 + 2e (x < 0) summed directly: a sum of positive terms, so still exact in the tails, and the
  // division ends the chain instead of being followed by 1 - m / den.
  template <typename T>
  FASTACT_HOST_DEVICE static T forward(T x, T /*unused*/) {
    if constexpr (fa_is_float_pack<T>::value) {
      if (!fa_any(fa_abs(x) > T(kModerate))) return forward_moderate(x);
      return fa_call_cold([x] { return forward_general(x); });
    } else {
      return forward_general(x);
    }
  }
  template <typename T>
  FASTACT_HOST_DEVICE static T forward_general(T x) {
    // where e = exp(x) is subnormal, f = x e (math_primitives.h)
    T f = fa_select_exp_tail(x, T(1), x, T(1), x * tanh_softplus_from(x, fa_exp_nonpositive_normal(fa_neg_abs(x))));
    f = fa_select(x == fa_neg(fa_inf<T>()), fa_neg(T(0)), f);  // the limit, -0 as for every x <= -1e30
    if constexpr (fa_is_float_pack<T>::value) {  // the lanes the fast path covers get its bits
      return fa_select(fa_abs(x) <= T(kModerate), forward_moderate(fa_clamp(x, -kModerate, kModerate)), f);
    }
    return f;
  }
  // The CPU forward's fast path, float packs with |x| <= 44 in every lane (all data but the far tails): there
  // E = exp(-x) and E^2 cannot overflow, and tanh(softplus(x)) = (1 + 2E) / (1 + 2E + 2E^2) for either sign of
  // x, with no selects (as accurate as the forms above: a sum of positive terms over another). forward_general
  // gives a pack's lanes in that range these same bits, so that no lane depends on its neighbours.
  static constexpr float kModerate = 44.0f;
  template <typename T>
  FASTACT_HOST_DEVICE static T forward_moderate(T x) {
    const T e = fa_exp_moderate_signed<-1>(x);
    const T two_e = T(2) * e;
    const T num = two_e + T(1);
    return x * (num / (two_e * e + num));
  }
  template <typename T>
  FASTACT_HOST_DEVICE static T tanh_softplus_from(T x, T e) {
    const T e_small = fa_tiny_as_zero(e);  // e^2 is added to 2e or to 1
    const T e2 = e_small * e_small;
    const T num = fa_select_negative(x, e2, T(1)) + T(2) * e;  // at x = +-0 (e = 1) both forms are 3 / 5
    const T den = num + fa_select_negative(x, T(2), T(2) * e2);
    return num / den;
  }

  template <typename T>
  FASTACT_HOST_DEVICE static void backward(T g, T x, T /*unused*/, T& gx, T& gp) {
    gp = T(0);
    if constexpr (fa_is_float_pack<T>::value) {
      if (!fa_any(fa_abs(x) > T(kModerateBackward))) [[likely]] {
        gx = backward_moderate(g, x);
        return;
      }
      gx = fa_call_cold([g, x] {  // by value: a reference to gx would keep it in memory in the hot path too
        T gx_;
        backward_general(g, x, fa_neg_abs(x), gx_);
        return fa_select(fa_abs(x) <= T(kModerateBackward),
                         backward_moderate(g, fa_clamp(x, -kModerateBackward, kModerateBackward)), gx_);
      });
    } else {
      backward_general(g, x, fa_neg_abs(x), gx);
    }
  }
  // The CPU backward's fast path, float packs with |x| <= 42 in every lane. With E = exp(-x) (either sign of
  // x, no select), N = 1 + 2E and D = N + 2E^2 as in forward_moderate, t = N / D = 1 - 2E^2 / D and
  // sigmoid(x) sech^2(softplus(x)) = 4 E^2 (1 + E) / D^2, so with a = E^2 / D (at most 1/2):
  //   f' = (N + 4x a (1 + E)) / D            for x < 0,
  //   f' = 1 + (4x a (1 + E) - 2E^2) / D     for x >= 0 (near 1, where N / D would round twice),
  // each one FMA into c and one FMA by 1 / D (a normal float for |x| <= 42). Against backward_terms' form
  // (float32, accuracy.cpp, 4M inputs): worst 6.93 -> 6.05 ulps, mean 0.428 -> 0.451; 11-12% less time on Zen 1.
  static constexpr float kModerateBackward = 42.0f;
  template <typename T>
  FASTACT_HOST_DEVICE static T backward_moderate(T g, T x) {
    const T e = fa_exp_moderate_signed<-1>(x);
    const T e2 = e * e;
    const T two_e2 = e2 + e2;
    const T num = fa_fma(T(2), e, T(1));
    const T inv_den = T(1) / (num + two_e2);
    const T four_x_a = (T(4) * x) * (e2 * inv_den);
    const T c = fa_fma(four_x_a, T(1) + e, fa_select_negative(x, num, fa_neg(two_e2)));
    return g * fa_fma(c, inv_den, fa_select_negative(x, T(0), T(1)));
  }
  // f' = tanh(softplus(x)) + tail, from e = exp(-|x|); gx = g f'. The same expressions in both paths (see
  // SwishOp::backward_terms).
  template <typename T>
  FASTACT_HOST_DEVICE static void backward_terms(T g, T x, T e, T& gx, T& term) {
    T m, den;
    parts(x, e, m, den);
    const T inv_den = T(1) / den;  // one division for both terms
    const T w = fa_select_negative(x, T(1), fa_tiny_as_zero(e));  // x >= 0: the tail is x e^2, added to ~1
    // 4e first: for |x| near the type's max, 4x overflows while e = 0 (inf * 0 would be NaN)
    const T tail = T(4) * e * x * (T(1) + e) * w * (inv_den * inv_den);
    term = tanh_softplus(x, m * inv_den);
    gx = g * (term + tail);
  }
  template <typename T>
  FASTACT_HOST_DEVICE static void backward_general(T g, T x, T u, T& gx) {
    T term;
    backward_terms(g, x, fa_exp_nonpositive_normal(u), gx, term);
    gx = fa_select_exp_tail(x, g, T(1), T(1) + x, gx);  // where e = exp(x) is subnormal, f' = (1 + x) e (math_primitives.h)
    gx = fa_select(fa_abs(x) == fa_inf<T>(), g * term, gx);  // the tail is inf * 0 there; its limit is 0
  }
};

// Leaky family: f = x for x > 0, alpha x otherwise, for any real alpha (1: identity, 0: ReLU, -1: |x|).
// At x = 0 the derivative is alpha, PyTorch's convention.
struct LeakyOp {
  // The forward where alpha != 0, which the kernels switch to when no alpha of a call is zero (CPU; CUDA for
  // a float alpha, the one it can check without a device read): only alpha = 0 needs forward()'s guard, and
  // at cache-resident sizes the guard costs the CPU kernel 12-15%.
  struct NonzeroParam {
    template <typename T>
    FASTACT_HOST_DEVICE static T forward(T x, T alpha) {
      return fa_select(x > T(0), x, alpha * x);
    }
  };

  // The forward where every alpha is nonzero and at most 1 (the usual slopes: 0.01, 0.2, 0.25, and every
  // negative one), which the CPU kernels switch to. There x > alpha x only where x > 0; where x > 0 but not
  // x > alpha x, alpha x equals x; and where x <= 0 or is NaN, the comparison is false and alpha x is f. So f is
  // x86's max(x, alpha x), which returns its second operand unless the first is greater: one instruction where
  // the select takes two (Zen 1, bfloat16 in cache: 17% less time).
  struct UnitParam {
    template <typename T>
    FASTACT_HOST_DEVICE static T forward(T x, T alpha) {
      return fa_greater_or_second(x, alpha * x);
    }
  };

  template <typename T>
  FASTACT_HOST_DEVICE static T forward(T x, T alpha) {
    // alpha = +-0 at x = -inf: the limit is -alpha (a zero of alpha x's sign at every finite x < 0), not NaN.
    const T negative = fa_select((alpha == T(0)) & (x == fa_neg(fa_inf<T>())), fa_neg(alpha), alpha * x);
    return fa_select(x > T(0), x, negative);
  }

  template <typename T>
  FASTACT_HOST_DEVICE static void backward(T g, T x, T alpha, T& gx, T& galpha) {
    const auto positive = x > T(0);
    gx = g * fa_select(positive, T(1), alpha);
    // selected after the product, as torch's formula: where x > 0 the term is 0 also for an inf or NaN g
    // (g * 0 would be NaN and spoil the channel's sum)
    galpha = fa_select(positive, T(0), g * x);
  }
};

// Op's cheaper forward (backward) for calls without a zero parameter: Op::NonzeroParam where it has one with a
// forward (backward), else Op.
template <typename Op, typename = void>
struct NonzeroParamForward {
  using type = Op;
};
template <typename Op>
struct NonzeroParamForward<Op, std::void_t<decltype(&Op::NonzeroParam::template forward<float>)>> {
  using type = typename Op::NonzeroParam;
};
// Op's forward for calls whose parameters are all nonzero and at most 1: Op::UnitParam where it has one, else
// the nonzero form.
template <typename Op, typename = void>
struct UnitParamForward {
  using type = typename NonzeroParamForward<Op>::type;
};
template <typename Op>
struct UnitParamForward<Op, std::void_t<decltype(&Op::UnitParam::template forward<float>)>> {
  using type = typename Op::UnitParam;
};
template <typename Op, typename = void>
struct NonzeroParamBackward {
  using type = Op;
};
template <typename Op>
struct NonzeroParamBackward<Op, std::void_t<decltype(&Op::NonzeroParam::template backward<float>)>> {
  using type = typename Op::NonzeroParam;
};

}  // namespace
}  // namespace fastact
