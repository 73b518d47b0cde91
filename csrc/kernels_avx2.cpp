// AVX2 path: XOR + nibble-lookup popcount (vpshufb), byte counts accumulated in registers and
// reduced with vpsadbw.  Compiled for baseline x86-64; only these functions carry target("avx2").
//
// Per 256 bits of one (row, filter) pair: xor, and, shift, and, 2 x vpshufb, 2 x add = 8 ops.
// Byte accumulators take at most 8 per 256-bit step, so they are flushed every 31 steps
// (31 * 8 = 248 < 256).  Words past the last full 256-bit step use scalar POPCNT, which runs on
// the integer pipes beside the vector ones.
#include "block.h"
#include "engine.h"

#if ONEBIT_X86
#include <immintrin.h>

namespace onebit {
namespace {

constexpr int kMaxSteps = 31;

template <int MR, int NR>
struct MkAvx2 {
  __attribute__((target("avx2,popcnt"))) static void run(const uint64_t* A, int64_t lda, const uint64_t* B,
                                                         int64_t ldb, int64_t kw, int32_t* C, int64_t ldc) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    int64_t tot[MR][NR] = {};
    const int64_t nv = kw >> 2;
    for (int64_t v0 = 0; v0 < nv; v0 += kMaxSteps) {
      const int64_t v1 = nv < v0 + kMaxSteps ? nv : v0 + kMaxSteps;
      __m256i acc[MR][NR];
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = zero;
      for (int64_t v = v0; v < v1; ++v) {
        __m256i a[MR];
        for (int i = 0; i < MR; ++i)
          a[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A + i * lda + 4 * v));
        for (int j = 0; j < NR; ++j) {
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + j * ldb + 4 * v));
          for (int i = 0; i < MR; ++i) {
            const __m256i x = _mm256_xor_si256(a[i], b);
            const __m256i lo = _mm256_and_si256(x, low);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
            acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(lut, lo));
            acc[i][j] = _mm256_add_epi8(acc[i][j], _mm256_shuffle_epi8(lut, hi));
          }
        }
      }
      for (int i = 0; i < MR; ++i) {
        for (int j = 0; j < NR; ++j) {
          const __m256i s = _mm256_sad_epu8(acc[i][j], zero);
          __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
          t = _mm_add_epi64(t, _mm_unpackhi_epi64(t, t));
          tot[i][j] += _mm_cvtsi128_si64(t);
        }
      }
    }
    for (int64_t w = nv * 4; w < kw; ++w) {
      for (int j = 0; j < NR; ++j) {
        const uint64_t b = B[j * ldb + w];
        for (int i = 0; i < MR; ++i) tot[i][j] += __builtin_popcountll(A[i * lda + w] ^ b);
      }
    }
    for (int j = 0; j < NR; ++j)
      for (int i = 0; i < MR; ++i) C[j * ldc + i] = static_cast<int32_t>(tot[i][j]);
  }
};

// Panel kernel on the nibble-split layout (engine.h): MP panels of 4 rows (a lo and a hi ymm per
// panel and word) against NR filters (broadcast lo and hi words).  Each 64-bit lane accumulates
// one (row, filter) pair, so vpsadbw of the byte counts leaves the four pair totals in place: no
// horizontal reduction, no vector-sized K tail.  Per 256 bit-pairs: 2 xor, 2 vpshufb, 2 add.
// The lo words of word w of panel q are at A + q * ps + off[w], its hi words 4 further: off[w] = 8 w
// for interleaved panels, or the tap offsets of a direct convolution (4 consecutive pixels of a
// padded, split copy of the input, see popcount_taps_avx2).
template <int MP, int NR>
struct PkAvx2 {
  __attribute__((target("avx2,popcnt"))) static void run(const uint64_t* A, int64_t ps, const uint64_t* B,
                                                         int64_t ldb, int64_t kw, int32_t kbits, int32_t* C,
                                                         int64_t ldc, const int64_t* off) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i tot[MP][NR];
    if (kw <= kMaxSteps) {  // one chunk (up to 1984 bits): no running totals to keep
      chunk(A, ps, B, ldb, off, 0, kw, tot);
    } else {
      __m256i part[MP][NR];
      for (int q = 0; q < MP; ++q)
        for (int j = 0; j < NR; ++j) tot[q][j] = zero;
      for (int64_t w0 = 0; w0 < kw; w0 += kMaxSteps) {
        chunk(A, ps, B, ldb, off, w0, kw < w0 + kMaxSteps ? kw : w0 + kMaxSteps, part);
        for (int q = 0; q < MP; ++q)
          for (int j = 0; j < NR; ++j) tot[q][j] = _mm256_add_epi64(tot[q][j], part[q][j]);
      }
    }
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m128i kb = _mm_set1_epi32(kbits);
    for (int j = 0; j < NR; ++j) {
      for (int q = 0; q < MP; ++q) {
        const __m128i pc = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(tot[q][j], even));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(C + j * ldc + 4 * q), _mm_sub_epi32(kb, _mm_add_epi32(pc, pc)));
      }
    }
  }

  // words [w0, w1) (at most kMaxSteps): byte counts, then vpsadbw into the four 64-bit lane sums
  __attribute__((target("avx2"), always_inline)) static inline void chunk(const uint64_t* A, int64_t ps,
                                                                         const uint64_t* B, int64_t ldb,
                                                                         const int64_t* off, int64_t w0, int64_t w1,
                                                                         __m256i (&out)[MP][NR]) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i zero = _mm256_setzero_si256();
    __m256i acc[MP][NR];
    for (int q = 0; q < MP; ++q)
      for (int j = 0; j < NR; ++j) acc[q][j] = zero;
    for (int64_t w = w0; w < w1; ++w) {
      __m256i alo[MP], ahi[MP];
      for (int q = 0; q < MP; ++q) {
        alo[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(A + q * ps + off[w]));
        ahi[q] = _mm256_load_si256(reinterpret_cast<const __m256i*>(A + q * ps + off[w] + 4));
      }
      for (int j = 0; j < NR; ++j) {
        const __m256i blo = _mm256_set1_epi64x(static_cast<long long>(B[j * ldb + 2 * w]));
        const __m256i bhi = _mm256_set1_epi64x(static_cast<long long>(B[j * ldb + 2 * w + 1]));
        for (int q = 0; q < MP; ++q) {
          const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(alo[q], blo)),
                                            _mm256_shuffle_epi8(lut, _mm256_xor_si256(ahi[q], bhi)));
          acc[q][j] = _mm256_add_epi8(acc[q][j], c);
        }
      }
    }
    for (int q = 0; q < MP; ++q)
      for (int j = 0; j < NR; ++j) out[q][j] = _mm256_sad_epu8(acc[q][j], zero);
  }
};

}  // namespace

void popcount_panel_avx2(const uint64_t* A, int64_t m, const uint64_t* B, int64_t ldb, int64_t n, int64_t kw,
                         int32_t kbits, int32_t* C, int64_t ldc) {
  // 2 panels (8 pixels) x 3 filters: 6 accumulators; measured on Zen 3 against 1x4 .. 3x4, which
  // are within a few percent (the loop is bound by vector-ALU throughput, not by loads)
  panel_driver<PkAvx2, 2, 3, 4, 2>(A, m / 4, kw * 8, B, ldb, n, kw, kbits, C, ldc, panel_offsets(kw));
}

// Direct convolution (TapFn): panel q of 4 pixels at A + 8 q (lo words, then hi), tap w at + off[w].
// Same 2 x 3 blocking as above: on 64 -> 64 @ 56x56 it measured as fast as 1 x 6 and 5-10% faster
// than 3 x 2, 2 x 4, 1 x 8 and 4 x 1 (AVX2 path on an AVX-512 Xeon; no Zen 3 at hand).
void popcount_taps_avx2(const uint64_t* A, int64_t np, const int64_t* off, const uint64_t* B, int64_t ldb, int64_t n,
                        int64_t kw, int32_t kbits, int32_t* C, int64_t ldc) {
  panel_driver<PkAvx2, 2, 3, 4, 2>(A, np, 8, B, ldb, n, kw, kbits, C, ldc, off);
}

void popcount_block_avx2(const uint64_t* A, int64_t lda, int64_t m, const uint64_t* B, int64_t ldb, int64_t n,
                         int64_t kw, int32_t* C, int64_t ldc) {
  block_driver<MkAvx2, 2, 4>(A, lda, m, B, ldb, n, kw, C, ldc);
}

}  // namespace onebit
#endif  // ONEBIT_X86
