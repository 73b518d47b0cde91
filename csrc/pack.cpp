// Bit packing of activations and weights.
//
// Bit rule everywhere: 1 iff v >= 0 with v = x + shift (the float32 sum, exactly what RSign computes
// before its sign), so -0.0 -> 1 and NaN -> 0.  Unused bits and padding words are 0.
#include <algorithm>
#include <cstring>
#include <vector>

#include "engine.h"

#if ONEBIT_X86
#include <immintrin.h>
#endif

// GCC 12's _mm512_unpacklo/hi_epi32 use a deliberately uninitialised temporary and warn about it at
// every use (as in kernels_avx512.cpp); the warning is noise here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace onebit {
namespace {

// ---- scalar ----

template <bool kShift>
inline uint64_t pack_word_scalar(const float* r, int64_t n, const float* shift) {
  uint64_t word = 0;
  for (int64_t k = 0; k < n; ++k) {
    const float v = kShift ? r[k] + shift[k] : r[k];
    word |= static_cast<uint64_t>(v >= 0.0f) << k;
  }
  return word;
}

// one row of K contiguous floats -> ldo words
template <bool kShift>
void pack_row_scalar(const float* r, int64_t K, const float* shift, uint64_t* o, int64_t ldo) {
  const int64_t nw = words_for(K);
  for (int64_t w = 0; w < nw; ++w) {
    const int64_t k0 = 64 * w;
    o[w] = pack_word_scalar<kShift>(r + k0, std::min<int64_t>(64, K - k0), kShift ? shift + k0 : nullptr);
  }
  for (int64_t w = nw; w < ldo; ++w) o[w] = 0;
}

// channels of one pixel with an arbitrary channel stride
void pack_strided_scalar(const float* px, int64_t sC, int64_t Cn, const float* shift, uint64_t* o) {
  const int64_t nw = words_for(Cn);
  for (int64_t w = 0; w < nw; ++w) {
    uint64_t word = 0;
    const int64_t c0 = 64 * w, cn = std::min<int64_t>(64, Cn - c0);
    for (int64_t k = 0; k < cn; ++k) {
      const int64_t c = c0 + k;
      const float v = shift ? px[c * sC] + shift[c] : px[c * sC];
      word |= static_cast<uint64_t>(v >= 0.0f) << k;
    }
    o[w] = word;
  }
}

#if ONEBIT_X86
// ---- AVX2 ----

template <bool kShift>
__attribute__((target("avx2"))) void pack_row_avx2(const float* r, int64_t K, const float* shift, uint64_t* o,
                                                   int64_t ldo) {
  const __m256 zero = _mm256_setzero_ps();
  const int64_t nw = words_for(K);
  for (int64_t w = 0; w < nw; ++w) {
    const int64_t k0 = 64 * w, kend = std::min<int64_t>(K, k0 + 64);
    uint64_t word = 0;
    int64_t k = k0;
    for (; k + 8 <= kend; k += 8) {
      __m256 v = _mm256_loadu_ps(r + k);
      if (kShift) v = _mm256_add_ps(v, _mm256_loadu_ps(shift + k));
      const uint64_t bits = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ)));
      word |= bits << (k - k0);
    }
    for (; k < kend; ++k) {
      const float v = kShift ? r[k] + shift[k] : r[k];
      word |= static_cast<uint64_t>(v >= 0.0f) << (k - k0);
    }
    o[w] = word;
  }
  for (int64_t w = nw; w < ldo; ++w) o[w] = 0;
}

// A run of npix pixels contiguous in memory (pixel stride 1), channel stride sC: for each pixel,
// the Cg channels of each group go to words out[p * ldp + g * Wg + j].  Word::kPix pixels at a
// time: Word::run(base, sC, shift, c0, cn, p, np, tmp) leaves in tmp[0..np) the words of channels
// c0 .. c0 + cn - 1 (cn <= 64) of pixels p .. p + np - 1: one compare per channel gives one bit for
// each of kPix pixels, ORed into 32-bit lanes (channels 0-31 and 32-63 of a word), then interleaved
// into 64-bit words.
template <class Word>
void pack_transpose_with(const float* base, int64_t sC, int64_t npix, const float* shift, int64_t Cg, int64_t G,
                         uint64_t* out, int64_t ldp) {
  const int64_t Wg = words_for(Cg);
  alignas(64) uint64_t tmp[Word::kPix];
  for (int64_t p = 0; p < npix; p += Word::kPix) {
    const int64_t np = std::min<int64_t>(Word::kPix, npix - p);
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t j = 0; j < Wg; ++j) {
        const int64_t c0 = g * Cg + 64 * j, cn = std::min<int64_t>(64, Cg - 64 * j);
        Word::run(base, sC, shift, c0, cn, p, np, tmp);
        uint64_t* o = out + p * ldp + g * Wg + j;
        for (int64_t q = 0; q < np; ++q) o[q * ldp] = tmp[q];
      }
    }
  }
}

// AVX2: 32 pixels per step, four 8-pixel vectors per channel (128 consecutive bytes of each channel
// row per visit; the AVX-512 packer below reads 256).
struct WordAvx2 {
  static constexpr int kPix = 32;
  __attribute__((target("avx2"))) static void run(const float* base, int64_t sC, const float* shift, int64_t c0,
                                                  int64_t cn, int64_t p, int64_t np, uint64_t* tmp) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i live[4];
    for (int k = 0; k < 4; ++k) live[k] = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(np - 8 * k)), lane);
    __m256i half[2][4];
    for (int h = 0; h < 2; ++h) {
      const int64_t cb = 32 * h, ce = std::min<int64_t>(cn, cb + 32);
      __m256i acc[4];
      for (int k = 0; k < 4; ++k) acc[k] = _mm256_setzero_si256();
      __m256i bit = _mm256_set1_epi32(1);
      for (int64_t c = cb; c < ce; ++c) {
        const float* src = base + (c0 + c) * sC + p;
        const __m256 sh = shift ? _mm256_set1_ps(shift[c0 + c]) : zero;
        for (int k = 0; k < 4; ++k) {
          __m256 v = np == 32 ? _mm256_loadu_ps(src + 8 * k) : _mm256_maskload_ps(src + 8 * k, live[k]);
          if (shift) v = _mm256_add_ps(v, sh);
          const __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_GE_OQ));
          acc[k] = _mm256_or_si256(acc[k], _mm256_and_si256(ge, bit));
        }
        bit = _mm256_add_epi32(bit, bit);
      }
      for (int k = 0; k < 4; ++k) half[h][k] = acc[k];
    }
    for (int k = 0; k < 4; ++k) {
      const __m256i u0 = _mm256_unpacklo_epi32(half[0][k], half[1][k]);  // pixels 0 1 | 4 5
      const __m256i u1 = _mm256_unpackhi_epi32(half[0][k], half[1][k]);  // pixels 2 3 | 6 7
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8 * k), _mm256_permute2x128_si256(u0, u1, 0x20));
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8 * k + 4), _mm256_permute2x128_si256(u0, u1, 0x31));
    }
  }
};

// AVX-512: 64 pixels per step, four 16-pixel vectors per channel, each compared into a mask register
// and ORed in with one masked OR (AVX2 needs compare, and, or per 8 pixels).  Each channel row is
// read in runs of 256 consecutive bytes, which the hardware prefetchers follow; no software
// prefetch (one prefetchnta per channel row and 16 pixels, as this code had, took the packer to 43%
// of the 64 -> 64 @ 56x56 layer's samples on an Intel Xeon, most of them on the prefetch, against
// 11% now; results/experiments/pack-prefetch/).
struct WordAvx512 {
  static constexpr int kPix = 64;
  __attribute__((target("avx512f"))) static void run(const float* base, int64_t sC, const float* shift, int64_t c0,
                                                     int64_t cn, int64_t p, int64_t np, uint64_t* tmp) {
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 live[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t r = np - 16 * k;
      live[k] = static_cast<__mmask16>(r >= 16 ? 0xffffu : r <= 0 ? 0u : (1u << r) - 1u);
    }
    __m512i half[2][4];
    for (int h = 0; h < 2; ++h) {
      const int64_t cb = 32 * h, ce = std::min<int64_t>(cn, cb + 32);
      __m512i acc[4];
      for (int k = 0; k < 4; ++k) acc[k] = _mm512_setzero_si512();
      __m512i bit = _mm512_set1_epi32(1);
      for (int64_t c = cb; c < ce; ++c) {
        const float* src = base + (c0 + c) * sC + p;
        const __m512 sh = shift ? _mm512_set1_ps(shift[c0 + c]) : zero;
        for (int k = 0; k < 4; ++k) {
          __m512 v = np == 64 ? _mm512_loadu_ps(src + 16 * k) : _mm512_maskz_loadu_ps(live[k], src + 16 * k);
          if (shift) v = _mm512_add_ps(v, sh);
          acc[k] = _mm512_mask_or_epi32(acc[k], _mm512_cmp_ps_mask(v, zero, _CMP_GE_OQ), acc[k], bit);
        }
        bit = _mm512_add_epi32(bit, bit);
      }
      for (int k = 0; k < 4; ++k) half[h][k] = acc[k];
    }
    // per 16 pixels: u0 holds pixels 0 1 4 5 8 9 12 13, u1 2 3 6 7 10 11 14 15 (64-bit words), then in order
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), hi = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (int k = 0; k < 4; ++k) {
      const __m512i u0 = _mm512_unpacklo_epi32(half[0][k], half[1][k]);
      const __m512i u1 = _mm512_unpackhi_epi32(half[0][k], half[1][k]);
      _mm512_store_si512(tmp + 16 * k, _mm512_permutex2var_epi64(u0, lo, u1));
      _mm512_store_si512(tmp + 16 * k + 8, _mm512_permutex2var_epi64(u0, hi, u1));
    }
  }
};
#endif

// the transpose-pack of the given SIMD level (AVX2 or AVX-512; x86 only)
void pack_transpose(Path isa, const float* base, int64_t sC, int64_t npix, const float* shift, int64_t Cg,
                    int64_t G, uint64_t* out, int64_t ldp) {
#if ONEBIT_X86
  if (isa == Path::AVX512) pack_transpose_with<WordAvx512>(base, sC, npix, shift, Cg, G, out, ldp);
  else pack_transpose_with<WordAvx2>(base, sC, npix, shift, Cg, G, out, ldp);
#else
  (void)isa, (void)base, (void)sC, (void)npix, (void)shift, (void)Cg, (void)G, (void)out, (void)ldp;
#endif
}

void pack_row(const float* r, int64_t K, const float* shift, uint64_t* o, int64_t ldo, bool avx2) {
#if ONEBIT_X86
  if (avx2) {
    if (shift) pack_row_avx2<true>(r, K, shift, o, ldo);
    else pack_row_avx2<false>(r, K, nullptr, o, ldo);
    return;
  }
#else
  (void)avx2;
#endif
  if (shift) pack_row_scalar<true>(r, K, shift, o, ldo);
  else pack_row_scalar<false>(r, K, nullptr, o, ldo);
}

}  // namespace

Path pack_isa(Path path) {
  const CpuFeatures& f = cpu_features();
  if (path == Path::Portable || !ONEBIT_X86 || !f.avx2) return Path::Portable;
  return path == Path::AVX512 && f.avx512_vpopcntdq ? Path::AVX512 : Path::AVX2;
}

void pack_pixels(const float* base, int64_t sC, int64_t npix, const float* shift, int64_t Cn, uint64_t* out,
                 int64_t ldp, Path isa) {
  if (isa != Path::Portable) {
    pack_transpose(isa, base, sC, npix, shift, Cn, 1, out, ldp);
    return;
  }
  for (int64_t p = 0; p < npix; ++p) pack_strided_scalar(base + p, sC, Cn, shift, out + p * ldp);
}

void pack_rows(const float* a, int64_t M, int64_t K, int64_t lda, const float* shift, uint64_t* out, int64_t ldo,
               bool avx2, int nthreads) {
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1));
  const int64_t ntasks = (M + rows_per_task - 1) / rows_per_task;
  parallel_for(ntasks, nthreads, [&](int64_t t) {
    const int64_t m1 = std::min(M, (t + 1) * rows_per_task);
    for (int64_t m = t * rows_per_task; m < m1; ++m) pack_row(a + m * lda, K, shift, out + m * ldo, ldo, avx2);
  });
}

void pack_rows_panels(const float* a, int64_t M, int64_t K, int64_t lda, const float* shift, uint64_t* out,
                      int64_t V, bool split, bool avx2, int nthreads) {
  const int64_t kw = words_for(K), np = round_up(M, V) / V, S = split ? 2 : 1;
  parallel_for(np, nthreads, [&](int64_t q) {
    std::vector<uint64_t> row(kw);
    uint64_t* panel = out + q * kw * V * S;
    for (int64_t r = 0; r < V; ++r) {
      const int64_t m = q * V + r;
      if (m < M) pack_row(a + m * lda, K, shift, row.data(), kw, avx2);
      else std::fill(row.begin(), row.end(), uint64_t{0});
      for (int64_t w = 0; w < kw; ++w) {
        if (split) {
          panel[2 * w * V + r] = nib_lo(row[w]);
          panel[2 * w * V + V + r] = nib_hi(row[w]);
        } else {
          panel[w * V + r] = row[w];
        }
      }
    }
  });
}

void interleave_panels(const uint64_t* A, int64_t M, int64_t lda, int64_t kw, int64_t V, bool split, uint64_t* out) {
  const int64_t Mp = round_up(M, V), S = split ? 2 : 1;
  for (int64_t m = 0; m < Mp; ++m) {
    uint64_t* dst = out + (m / V) * kw * V * S + m % V;
    for (int64_t w = 0; w < kw; ++w) {
      const uint64_t word = m < M ? A[m * lda + w] : 0;
      if (split) {
        dst[2 * w * V] = nib_lo(word);
        dst[2 * w * V + V] = nib_hi(word);
      } else {
        dst[w * V] = word;
      }
    }
  }
}

void split_rows(const uint64_t* B, int64_t N, int64_t ldb, int64_t kw, uint64_t* out, int nthreads) {
  const int64_t per = std::max<int64_t>(1, 4096 / std::max<int64_t>(kw, 1)), ntasks = (N + per - 1) / per;
  parallel_for(ntasks, nthreads, [&](int64_t t) {
    const int64_t n1 = std::min(N, (t + 1) * per);
    for (int64_t n = t * per; n < n1; ++n) {
      const uint64_t* b = B + n * ldb;
      uint64_t* o = out + n * 2 * kw;
      for (int64_t w = 0; w < kw; ++w) {
        o[2 * w] = nib_lo(b[w]);
        o[2 * w + 1] = nib_hi(b[w]);
      }
    }
  });
}

void pack_nchw(const float* x, int64_t N, int64_t C, int64_t H, int64_t W, const int64_t s[4], const float* shift,
               int64_t G, uint64_t* out, Path isa, int nthreads) {
  const int64_t Cg = C / G, Wg = words_for(Cg), ldp = G * Wg, HW = H * W;
  const bool avx2 = isa != Path::Portable;
  const bool channels_last = s[1] == 1 && C > 1;  // each pixel's channels are contiguous
  if (avx2 && !channels_last && (s[3] == 1 || W == 1)) {
    const bool plane = (s[2] == W || H == 1);  // the whole H x W plane is one contiguous run
    if (plane) {
      const int64_t chunk = 128, nchunks = (HW + chunk - 1) / chunk;
      parallel_for(N * nchunks, nthreads, [&](int64_t t) {
        const int64_t n = t / nchunks, p0 = (t % nchunks) * chunk, np = std::min(chunk, HW - p0);
        pack_transpose(isa, x + n * s[0] + p0, s[1], np, shift, Cg, G, out + (n * HW + p0) * ldp, ldp);
      });
    } else {
      parallel_for(N * H, nthreads, [&](int64_t t) {
        const int64_t n = t / H, h = t % H;
        pack_transpose(isa, x + n * s[0] + h * s[2], s[1], W, shift, Cg, G, out + (n * H + h) * W * ldp, ldp);
      });
    }
    return;
  }
  parallel_for(N * H, nthreads, [&](int64_t t) {  // pixel by pixel
    const int64_t n = t / H, h = t % H;
    for (int64_t w = 0; w < W; ++w) {
      const float* px = x + n * s[0] + h * s[2] + w * s[3];
      uint64_t* o = out + ((n * H + h) * W + w) * ldp;
      for (int64_t g = 0; g < G; ++g) {
        const float* sg = shift ? shift + g * Cg : nullptr;
        if (channels_last) pack_row(px + g * Cg, Cg, sg, o + g * Wg, Wg, avx2);
        else pack_strided_scalar(px + g * Cg * s[1], s[1], Cg, sg, o + g * Wg);
      }
    }
  });
}

void pack_conv_weight(const float* w, int64_t F, int64_t Cg, int64_t KH, int64_t KW, uint64_t* bits, int64_t ldb,
                      int32_t* tapsum) {
  const int64_t taps = KH * KW, Wg = words_for(Cg);
  std::memset(bits, 0, sizeof(uint64_t) * F * ldb);
  for (int64_t f = 0; f < F; ++f) {
    for (int64_t t = 0; t < taps; ++t) {
      int32_t sum = 0;
      for (int64_t c = 0; c < Cg; ++c) {
        const bool pos = w[(f * Cg + c) * taps + t] >= 0.0f;
        sum += pos ? 1 : -1;
        if (pos) bits[f * ldb + t * Wg + c / 64] |= uint64_t{1} << (c % 64);
      }
      tapsum[f * taps + t] = sum;
    }
  }
}

}  // namespace onebit
