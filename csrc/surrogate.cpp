// Training-time surrogate gradients of sign(x), fused into one pass: out = g * s(x).
//
// The torch version of ReSTE's backward (onebit.binarize.sign.reste_grad) takes seven passes
// over the activation, each with a fresh tensor, and was 28% of a binary ResNet-20 training step
// on CPU.  Here each element is read once:
//
//   reste:       s(x) = m^(1/o) / m                   |x| <= m   (chord slope through 0)
//                       (1/o) |x|^((1 - o) / o)       m < |x| <= t
//                       0                             |x| > t      (ReSTE's estimator; reference.md)
//   approx_sign: s(x) = max(0, 2 - 2|x|)                           (Bi-Real Net Eq. 6)
//
// |x|^e is exp(e ln|x|) with ln and exp from range reduction and short series (below), within a
// few float32 ulps of powf.  Every path runs the same code (one template on N-lane vectors) with
// plain IEEE mul/add/div (no FMA; the build has -ffp-contract=off), so every path gives identical
// bits and an element's gradient does not depend on where it sits in the tensor.  NaN in x gives NaN.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine.h"

// The lane templates below are always inlined into functions with internal linkage: no vector
// crosses an ABI boundary, so GCC's note that passing AVX vectors changed ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace onebit {
namespace {

// ln(f) for f in [sqrt(1/2), sqrt(2)): s = (f - 1) / (f + 1), |s| <= 0.1716,
// ln f = 2 (s + s^3/3 + s^5/5 + ...); terms past s^11 are below 3e-10.
constexpr float kC3 = 1.0f / 3, kC5 = 1.0f / 5, kC7 = 1.0f / 7, kC9 = 1.0f / 9, kC11 = 1.0f / 11;
// exp(r) for |r| <= ln(2)/2 = 0.347: Taylor series to r^8 (next term below 2e-10).
constexpr float kE2 = 1.0f / 2, kE3 = 1.0f / 6, kE4 = 1.0f / 24, kE5 = 1.0f / 120, kE6 = 1.0f / 720,
                kE7 = 1.0f / 5040, kE8 = 1.0f / 40320;
// ln 2 split in two so that k * kLn2Hi is exact for |k| < 2^8
constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723212e-6f;
constexpr float kInvLn2 = 1.44269504088896341f;
constexpr float kSqrt2 = 1.41421356237309505f;

// One implementation for every path, written on N-lane vectors (GCC/Clang vector extensions):
// instantiated at 1 lane for the portable path and the vector paths' tails, and at 8 and 16 lanes
// inside functions compiled for AVX2 and AVX-512, where the compiler lowers it to those registers.
template <int N>
struct Lanes {
  typedef float F __attribute__((vector_size(4 * N)));
  typedef int32_t I __attribute__((vector_size(4 * N)));
};

// Round to the nearest integer, ties to even (as nearbyint in the default rounding mode), for |v| < 2^22.
template <class F>
inline __attribute__((always_inline)) F round_even(const F& v) {
  return (v + 12582912.0f) - 12582912.0f;  // 1.5 * 2^23
}

// a^e for a normal positive float and |e ln a| < 80 (other lanes give a value the callers discard).
template <class F, class I>
inline __attribute__((always_inline)) F pow_lanes(const F& a, const F& e) {
  const I u = (I)a;
  F k = __builtin_convertvector((u >> 23) - 127, F);
  F f = (F)((u & 0x7fffff) | 0x3f800000);  // [1, 2)
  const I big = f >= kSqrt2;
  f = big ? f * 0.5f : f;
  k = big ? k + 1.0f : k;
  const F s = (f - 1.0f) / (f + 1.0f);
  const F s2 = s * s;
  const F series = ((((kC11 * s2 + kC9) * s2 + kC7) * s2 + kC5) * s2 + kC3) * s2 + 1.0f;
  const F lnf = (2.0f * s) * series;
  const F w = e * (k * kLn2Hi + (k * kLn2Lo + lnf));
  const F n = round_even(w * kInvLn2);
  const F r = (w - n * kLn2Hi) - n * kLn2Lo;
  const F p = ((((((((kE8 * r + kE7) * r + kE6) * r + kE5) * r + kE4) * r + kE3) * r + kE2) * r + 1.0f) * r) + 1.0f;
  return p * (F)((__builtin_convertvector(n, I) + 127) << 23);
}

template <class F, class I>
inline __attribute__((always_inline)) F abs_lanes(const F& x) {
  return (F)((I)x & 0x7fffffff);
}

template <class F, class I>
inline __attribute__((always_inline)) F reste_lanes(const F& x, const F& g, const SurrogateParams& q) {
  const F a = abs_lanes<F, I>(x);
  F v = g * (q.inv_o * pow_lanes<F, I>(a, F{} + q.expo));
  v = a <= q.m ? g * q.flat : v;
  v = a > q.t ? 0.0f * g : v;
  return a != a ? a : v;  // NaN in, NaN out
}

template <class F, class I>
inline __attribute__((always_inline)) F approx_sign_lanes(const F& x, const F& g) {
  const F s = 1.0f - abs_lanes<F, I>(x);
  const F c = s <= 0.0f ? F{} : s;  // max(s, 0) keeping NaN: zero only where s <= 0 (ordered)
  return g * (c * 2.0f);
}

// out[i] = g[i] * s(x[i]) for the whole N-lane groups of [0, n); returns how many were done.
template <int N>
inline __attribute__((always_inline)) int64_t surrogate_lanes(Surrogate kind, const float* x, const float* g,
                                                               float* out, int64_t n, const SurrogateParams& q) {
  using F = typename Lanes<N>::F;
  using I = typename Lanes<N>::I;
  int64_t i = 0;
  F xv, gv, v;
  if (kind == Surrogate::ReSTE)
    for (; i + N <= n; i += N) {
      std::memcpy(&xv, x + i, sizeof xv);
      std::memcpy(&gv, g + i, sizeof gv);
      v = reste_lanes<F, I>(xv, gv, q);
      std::memcpy(out + i, &v, sizeof v);
    }
  else
    for (; i + N <= n; i += N) {
      std::memcpy(&xv, x + i, sizeof xv);
      std::memcpy(&gv, g + i, sizeof gv);
      v = approx_sign_lanes<F, I>(xv, gv);
      std::memcpy(out + i, &v, sizeof v);
    }
  return i;
}

void surrogate_portable(Surrogate kind, const float* x, const float* g, float* out, int64_t n,
                        const SurrogateParams& q) {
  surrogate_lanes<1>(kind, x, g, out, n, q);
}

#if ONEBIT_X86
__attribute__((target("avx512f"))) void surrogate_avx512(Surrogate kind, const float* x, const float* g,
                                                          float* out, int64_t n, const SurrogateParams& q) {
  const int64_t i = surrogate_lanes<16>(kind, x, g, out, n, q);
  surrogate_portable(kind, x + i, g + i, out + i, n - i, q);
}

__attribute__((target("avx2"))) void surrogate_avx2(Surrogate kind, const float* x, const float* g,
                                                     float* out, int64_t n, const SurrogateParams& q) {
  const int64_t i = surrogate_lanes<8>(kind, x, g, out, n, q);
  surrogate_portable(kind, x + i, g + i, out + i, n - i, q);
}
#endif

}  // namespace

SurrogateParams reste_params(double o, double t, double m) {
  SurrogateParams q;
  q.t = static_cast<float>(t);
  q.m = static_cast<float>(m);
  q.inv_o = static_cast<float>(1.0 / o);
  q.expo = static_cast<float>((1.0 - o) / o);
  q.flat = static_cast<float>(std::pow(m, 1.0 / o) / m);
  return q;
}

void surrogate_grad(Surrogate kind, const float* x, const float* g, float* out, int64_t n,
                    const SurrogateParams& q, Path path, int nthreads) {
  constexpr int64_t kChunk = 1 << 15;  // 128 KiB of each array per task
  const int64_t ntasks = (n + kChunk - 1) / kChunk;
  parallel_for(ntasks, nthreads, [&](int64_t task) {
    const int64_t i0 = task * kChunk, len = n - i0 < kChunk ? n - i0 : kChunk;
#if ONEBIT_X86
    if (path == Path::AVX512) return surrogate_avx512(kind, x + i0, g + i0, out + i0, len, q);
    if (path == Path::AVX2) return surrogate_avx2(kind, x + i0, g + i0, out + i0, len, q);
#endif
    surrogate_portable(kind, x + i0, g + i0, out + i0, len, q);
  });
}

}  // namespace onebit
