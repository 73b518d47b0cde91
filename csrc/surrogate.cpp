// Training-time surrogate gradients of sign(x), fused into one pass: out = g * s(x).
//
// The torch version of ReSTE's backward (onebit.binarize.sign.reste_grad) takes seven passes
// over the activation, each with a fresh tensor, and was 28% of a binary ResNet-20 training step
// on CPU.  Here each element is read once:
//
//   reste:       s(x) = m^(1/o) / m                   |x| <= m   (chord slope through 0)
//                       (1/o) |x|^((1 - o) / o)       m < |x| <= t
//                       0                             |x| > t      (paper 001 Eq. 7; reference.md)
//   approx_sign: s(x) = max(0, 2 - 2|x|)                           (Bi-Real Net Eq. 6)
//
// |x|^e is exp(e ln|x|) with ln and exp from range reduction and short series (below), within a
// few float32 ulps of powf.  The vector paths use plain IEEE mul/add/div in the same order as the
// scalar one (no FMA; the build has -ffp-contract=off), so every path gives identical bits and an
// element's gradient does not depend on where it sits in the tensor.  NaN in x gives NaN.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine.h"

#if ONEBIT_X86
#include <immintrin.h>
#endif

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

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// a^e for a normal positive float and |e ln a| < 80.
inline float pow_scalar(float a, float e) {
  const uint32_t u = float_to_bits(a);
  float k = static_cast<float>(static_cast<int32_t>(u >> 23) - 127);
  float f = bits_to_float((u & 0x7fffffu) | 0x3f800000u);  // [1, 2)
  if (f >= kSqrt2) {
    f = f * 0.5f;
    k = k + 1.0f;
  }
  const float s = (f - 1.0f) / (f + 1.0f);
  const float s2 = s * s;
  const float series = ((((kC11 * s2 + kC9) * s2 + kC7) * s2 + kC5) * s2 + kC3) * s2 + 1.0f;
  const float lnf = (2.0f * s) * series;
  const float w = e * (k * kLn2Hi + (k * kLn2Lo + lnf));
  const float n = std::nearbyint(w * kInvLn2);
  const float r = (w - n * kLn2Hi) - n * kLn2Lo;
  const float p = ((((((((kE8 * r + kE7) * r + kE6) * r + kE5) * r + kE4) * r + kE3) * r + kE2) * r + 1.0f) * r) + 1.0f;
  return p * bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
}

inline float reste_scalar(float x, float g, const SurrogateParams& q) {
  const float a = std::fabs(x);
  if (a != a) return a;
  if (a > q.t) return 0.0f * g;
  if (a <= q.m) return g * q.flat;
  return g * (q.inv_o * pow_scalar(a, q.expo));
}

inline float approx_sign_scalar(float x, float g) {
  const float a = std::fabs(x);
  const float s = 1.0f - a;
  return g * ((s > 0.0f ? s : (s != s ? s : 0.0f)) * 2.0f);
}

void surrogate_portable(Surrogate kind, const float* x, const float* g, float* out, int64_t n,
                        const SurrogateParams& q) {
  if (kind == Surrogate::ReSTE)
    for (int64_t i = 0; i < n; ++i) out[i] = reste_scalar(x[i], g[i], q);
  else
    for (int64_t i = 0; i < n; ++i) out[i] = approx_sign_scalar(x[i], g[i]);
}

#if ONEBIT_X86
// The same operations as pow_scalar, 16 lanes at a time.
__attribute__((target("avx512f"))) inline __m512 pow_avx512(__m512 a, __m512 e) {
  const __m512i u = _mm512_castps_si512(a);
  __m512 k = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(u, 23), _mm512_set1_epi32(127)));
  __m512 f = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffff)),
                                                 _mm512_set1_epi32(0x3f800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(f, _mm512_set1_ps(kSqrt2), _CMP_GE_OQ);
  f = _mm512_mask_mul_ps(f, big, f, _mm512_set1_ps(0.5f));
  k = _mm512_mask_add_ps(k, big, k, _mm512_set1_ps(1.0f));
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 s = _mm512_div_ps(_mm512_sub_ps(f, one), _mm512_add_ps(f, one));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 ser = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(kC11), s2), _mm512_set1_ps(kC9));
  ser = _mm512_add_ps(_mm512_mul_ps(ser, s2), _mm512_set1_ps(kC7));
  ser = _mm512_add_ps(_mm512_mul_ps(ser, s2), _mm512_set1_ps(kC5));
  ser = _mm512_add_ps(_mm512_mul_ps(ser, s2), _mm512_set1_ps(kC3));
  ser = _mm512_add_ps(_mm512_mul_ps(ser, s2), one);
  const __m512 lnf = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0f), s), ser);
  const __m512 w = _mm512_mul_ps(e, _mm512_add_ps(_mm512_mul_ps(k, _mm512_set1_ps(kLn2Hi)),
                                                  _mm512_add_ps(_mm512_mul_ps(k, _mm512_set1_ps(kLn2Lo)), lnf)));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(w, _mm512_set1_ps(kInvLn2)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(w, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Hi))),
                                 _mm512_mul_ps(n, _mm512_set1_ps(kLn2Lo)));
  __m512 p = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(kE8), r), _mm512_set1_ps(kE7));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kE6));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kE5));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kE4));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kE3));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kE2));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), one);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), one);
  const __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
}

__attribute__((target("avx512f"))) void surrogate_avx512(Surrogate kind, const float* x, const float* g,
                                                          float* out, int64_t n, const SurrogateParams& q) {
  int64_t i = 0;
  if (kind == Surrogate::ReSTE) {
    const __m512 t = _mm512_set1_ps(q.t), m = _mm512_set1_ps(q.m), flat = _mm512_set1_ps(q.flat);
    const __m512 inv_o = _mm512_set1_ps(q.inv_o), e = _mm512_set1_ps(q.expo);
    for (; i + 16 <= n; i += 16) {
      const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
      const __m512 gv = _mm512_loadu_ps(g + i);
      __m512 v = _mm512_mul_ps(gv, _mm512_mul_ps(inv_o, pow_avx512(a, e)));
      v = _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(a, m, _CMP_LE_OQ), gv, flat);
      v = _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(a, t, _CMP_GT_OQ), _mm512_setzero_ps(), gv);
      v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), a);
      _mm512_storeu_ps(out + i, v);
    }
  } else {
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    for (; i + 16 <= n; i += 16) {
      const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + i));
      const __m512 s = _mm512_sub_ps(one, a);
      // max(s, 0) keeping NaN: zero only where s <= 0 (ordered)
      const __m512 c = _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_LE_OQ),
                                          _mm512_setzero_ps());
      _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_loadu_ps(g + i), _mm512_mul_ps(c, two)));
    }
  }
  surrogate_portable(kind, x + i, g + i, out + i, n - i, q);
}

// The same operations as pow_scalar, 8 lanes at a time.
__attribute__((target("avx2"))) inline __m256 pow_avx2(__m256 a, __m256 e) {
  const __m256i u = _mm256_castps_si256(a);
  __m256 k = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(u, 23), _mm256_set1_epi32(127)));
  __m256 f = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffff)),
                                                 _mm256_set1_epi32(0x3f800000)));
  const __m256 big = _mm256_cmp_ps(f, _mm256_set1_ps(kSqrt2), _CMP_GE_OQ);
  f = _mm256_blendv_ps(f, _mm256_mul_ps(f, _mm256_set1_ps(0.5f)), big);
  k = _mm256_blendv_ps(k, _mm256_add_ps(k, _mm256_set1_ps(1.0f)), big);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 s = _mm256_div_ps(_mm256_sub_ps(f, one), _mm256_add_ps(f, one));
  const __m256 s2 = _mm256_mul_ps(s, s);
  __m256 ser = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(kC11), s2), _mm256_set1_ps(kC9));
  ser = _mm256_add_ps(_mm256_mul_ps(ser, s2), _mm256_set1_ps(kC7));
  ser = _mm256_add_ps(_mm256_mul_ps(ser, s2), _mm256_set1_ps(kC5));
  ser = _mm256_add_ps(_mm256_mul_ps(ser, s2), _mm256_set1_ps(kC3));
  ser = _mm256_add_ps(_mm256_mul_ps(ser, s2), one);
  const __m256 lnf = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), s), ser);
  const __m256 w = _mm256_mul_ps(e, _mm256_add_ps(_mm256_mul_ps(k, _mm256_set1_ps(kLn2Hi)),
                                                  _mm256_add_ps(_mm256_mul_ps(k, _mm256_set1_ps(kLn2Lo)), lnf)));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(w, _mm256_set1_ps(kInvLn2)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(_mm256_sub_ps(w, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Hi))),
                                 _mm256_mul_ps(n, _mm256_set1_ps(kLn2Lo)));
  __m256 p = _mm256_add_ps(_mm256_mul_ps(_mm256_set1_ps(kE8), r), _mm256_set1_ps(kE7));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kE6));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kE5));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kE4));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kE3));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kE2));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), one);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), one);
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

__attribute__((target("avx2"))) void surrogate_avx2(Surrogate kind, const float* x, const float* g,
                                                     float* out, int64_t n, const SurrogateParams& q) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = 0;
  if (kind == Surrogate::ReSTE) {
    const __m256 t = _mm256_set1_ps(q.t), m = _mm256_set1_ps(q.m), flat = _mm256_set1_ps(q.flat);
    const __m256 inv_o = _mm256_set1_ps(q.inv_o), e = _mm256_set1_ps(q.expo);
    for (; i + 8 <= n; i += 8) {
      const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), absmask);
      const __m256 gv = _mm256_loadu_ps(g + i);
      __m256 v = _mm256_mul_ps(gv, _mm256_mul_ps(inv_o, pow_avx2(a, e)));
      v = _mm256_blendv_ps(v, _mm256_mul_ps(gv, flat), _mm256_cmp_ps(a, m, _CMP_LE_OQ));
      v = _mm256_blendv_ps(v, _mm256_mul_ps(zero, gv), _mm256_cmp_ps(a, t, _CMP_GT_OQ));
      v = _mm256_blendv_ps(v, a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
      _mm256_storeu_ps(out + i, v);
    }
  } else {
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    for (; i + 8 <= n; i += 8) {
      const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + i), absmask);
      const __m256 s = _mm256_sub_ps(one, a);
      const __m256 c = _mm256_blendv_ps(s, zero, _mm256_cmp_ps(s, zero, _CMP_LE_OQ));
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_mul_ps(c, two)));
    }
  }
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
