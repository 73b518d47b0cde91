// AVX-512 path: XOR + VPOPCNTDQ (_mm512_popcnt_epi64), 64-bit lane accumulators, 4 x 4 register
// blocking (16 accumulators of the 32 zmm registers).  The last partial 512-bit step uses masked
// loads (masked-out lanes read as 0 and are never touched in memory), so both tails xor to 0.
#include "block.h"
#include "engine.h"

#if ONEBIT_X86
#include <immintrin.h>

// GCC 12's AVX-512 headers use deliberately uninitialised temporaries (_mm512_undefined_*) in
// several intrinsics and then warn about them at every use; the warning is noise here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace onebit {
namespace {

#ifndef ONEBIT_AVX512_TARGET  // (an emulation harness may define it empty)
#define ONEBIT_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt")))
#endif

template <int MR, int NR>
struct MkAvx512 {
  ONEBIT_AVX512_TARGET static void run(const uint64_t* A, int64_t lda, const uint64_t* B, int64_t ldb,
                                       int64_t kw, int32_t* C, int64_t ldc) {
    __m512i acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
    int64_t w = 0;
    for (; w + 8 <= kw; w += 8) {
      __m512i a[MR];
      for (int i = 0; i < MR; ++i) a[i] = _mm512_loadu_si512(A + i * lda + w);
      for (int j = 0; j < NR; ++j) {
        const __m512i b = _mm512_loadu_si512(B + j * ldb + w);
        for (int i = 0; i < MR; ++i)
          acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(a[i], b)));
      }
    }
    if (w < kw) {
      const __mmask8 mask = static_cast<__mmask8>((1u << (kw - w)) - 1u);
      __m512i a[MR];
      for (int i = 0; i < MR; ++i) a[i] = _mm512_maskz_loadu_epi64(mask, A + i * lda + w);
      for (int j = 0; j < NR; ++j) {
        const __m512i b = _mm512_maskz_loadu_epi64(mask, B + j * ldb + w);
        for (int i = 0; i < MR; ++i)
          acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(a[i], b)));
      }
    }
    // (not _mm512_reduce_add_epi64: GCC 12's header warns about an uninitialised temporary in it)
    alignas(64) int64_t lanes[8];
    for (int j = 0; j < NR; ++j) {
      for (int i = 0; i < MR; ++i) {
        _mm512_store_si512(lanes, acc[i][j]);
        C[j * ldc + i] = static_cast<int32_t>(lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] +
                                              lanes[6] + lanes[7]);
      }
    }
  }
};

// Panel kernel: MP panels of 8 rows (one zmm per panel and word) against NR filters (broadcast
// words): xor, vpopcntq, add per 512 bit-pairs, every lane one (row, filter) pair.  Word w of
// panel q is at A + q * ps + off[w]: off[w] = 8 w for interleaved panels, or the tap offsets of a
// direct convolution (8 consecutive pixels of a padded packed input, unaligned).
template <int MP, int NR>
struct PkAvx512 {
  ONEBIT_AVX512_TARGET static void run(const uint64_t* A, int64_t ps, const uint64_t* B, int64_t ldb, int64_t kw,
                                       int32_t kbits, int32_t* C, int64_t ldc, const int64_t* off) {
    __m512i acc[MP][NR];
    for (int q = 0; q < MP; ++q)
      for (int j = 0; j < NR; ++j) acc[q][j] = _mm512_setzero_si512();
    for (int64_t w = 0; w < kw; ++w) {
      __m512i a[MP];
      for (int q = 0; q < MP; ++q) a[q] = _mm512_loadu_si512(A + q * ps + off[w]);
      for (int j = 0; j < NR; ++j) {
        const __m512i b = _mm512_set1_epi64(static_cast<long long>(B[j * ldb + w]));
        for (int q = 0; q < MP; ++q)
          acc[q][j] = _mm512_add_epi64(acc[q][j], _mm512_popcnt_epi64(_mm512_xor_si512(a[q], b)));
      }
    }
    // low dwords of the 64-bit sums (which fit in 32 bits); vpermd rather than vpmovqd, whose GCC 12
    // intrinsic warns about an uninitialised temporary
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i kb = _mm256_set1_epi32(kbits);
    for (int j = 0; j < NR; ++j) {
      for (int q = 0; q < MP; ++q) {
        const __m256i pc = _mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, acc[q][j]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(C + j * ldc + 8 * q),
                            _mm256_sub_epi32(kb, _mm256_add_epi32(pc, pc)));
      }
    }
  }
};

}  // namespace

void popcount_panel_avx512(const uint64_t* A, int64_t m, const uint64_t* B, int64_t ldb, int64_t n, int64_t kw,
                           int32_t kbits, int32_t* C, int64_t ldc) {
  panel_driver<PkAvx512, 4, 4, 8>(A, m / 8, kw * 8, B, ldb, n, kw, kbits, C, ldc, panel_offsets(kw));
}

// Tiles of 5 or more panels (40+ output pixels) run one filter at a time over up to 7 panels: each
// input load then folds into its xor (no register reuse to keep), which measured about 8% faster
// at 64 channels on 56x56 on Zen 5 than 4 x 4 blocking.  (Measured with one call per output row,
// where CIFAR's rows of 32 and fewer pixels were faster with 4 x 4; conv2d now passes whole tiles of
// rows, where 7 x 1 measured 1-5% faster than those per-row 4 x 4 calls on an AVX-512 Xeon.)
void popcount_taps_avx512(const uint64_t* A, int64_t np, const int64_t* off, const uint64_t* B, int64_t ldb, int64_t n,
                          int64_t kw, int32_t kbits, int32_t* C, int64_t ldc) {
  if (np >= 5)
    panel_driver<PkAvx512, 7, 1, 8>(A, np, 8, B, ldb, n, kw, kbits, C, ldc, off);
  else
    panel_driver<PkAvx512, 4, 4, 8>(A, np, 8, B, ldb, n, kw, kbits, C, ldc, off);
}

void popcount_block_avx512(const uint64_t* A, int64_t lda, int64_t m, const uint64_t* B, int64_t ldb,
                           int64_t n, int64_t kw, int32_t* C, int64_t ldc) {
  block_driver<MkAvx512, 4, 4>(A, lda, m, B, ldb, n, kw, C, ldc);
}

}  // namespace onebit
#endif  // ONEBIT_X86
