// Portable path: 64-bit scalar XOR + popcount, 2 x 4 register blocking.
// On x86-64 the same code is also compiled with target("popcnt") (the POPCNT instruction instead
// of libgcc's bit-twiddling routine) and used when the CPU has it.
#include "block.h"
#include "engine.h"

namespace onebit {
namespace {

ONEBIT_INLINE int popcount64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_popcountll(x);
#else
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return static_cast<int>((x * 0x0101010101010101ULL) >> 56);
#endif
}

template <int MR, int NR>
ONEBIT_INLINE void scalar_body(const uint64_t* A, int64_t lda, const uint64_t* B, int64_t ldb, int64_t kw,
                               int32_t* C, int64_t ldc) {
  int64_t acc[MR][NR] = {};
  for (int64_t w = 0; w < kw; ++w) {
    uint64_t a[MR];
    for (int i = 0; i < MR; ++i) a[i] = A[i * lda + w];
    for (int j = 0; j < NR; ++j) {
      const uint64_t b = B[j * ldb + w];
      for (int i = 0; i < MR; ++i) acc[i][j] += popcount64(a[i] ^ b);
    }
  }
  for (int j = 0; j < NR; ++j)
    for (int i = 0; i < MR; ++i) C[j * ldc + i] = static_cast<int32_t>(acc[i][j]);
}

// Panel layout, V = 4 rows per panel: MP panels x NR rows of B.
template <int MP, int NR>
ONEBIT_INLINE void scalar_panel_body(const uint64_t* A, int64_t ps, const uint64_t* B, int64_t ldb, int64_t kw,
                                     int32_t kbits, int32_t* C, int64_t ldc) {
  int64_t acc[MP * 4][NR] = {};
  for (int64_t w = 0; w < kw; ++w) {
    for (int j = 0; j < NR; ++j) {
      const uint64_t b = B[j * ldb + w];
      for (int q = 0; q < MP; ++q)
        for (int r = 0; r < 4; ++r) acc[q * 4 + r][j] += popcount64(A[q * ps + w * 4 + r] ^ b);
    }
  }
  for (int j = 0; j < NR; ++j)
    for (int i = 0; i < MP * 4; ++i) C[j * ldc + i] = kbits - 2 * static_cast<int32_t>(acc[i][j]);
}

template <int MP, int NR>
struct PkPortable {
  static void run(const uint64_t* A, int64_t ps, const uint64_t* B, int64_t ldb, int64_t kw, int32_t kbits,
                  int32_t* C, int64_t ldc) {
    scalar_panel_body<MP, NR>(A, ps, B, ldb, kw, kbits, C, ldc);
  }
};

template <int MR, int NR>
struct MkPortable {
  static void run(const uint64_t* A, int64_t lda, const uint64_t* B, int64_t ldb, int64_t kw, int32_t* C,
                  int64_t ldc) {
    scalar_body<MR, NR>(A, lda, B, ldb, kw, C, ldc);
  }
};

#if ONEBIT_X86
template <int MP, int NR>
struct PkPopcnt {
  __attribute__((target("popcnt"))) static void run(const uint64_t* A, int64_t ps, const uint64_t* B,
                                                    int64_t ldb, int64_t kw, int32_t kbits, int32_t* C,
                                                    int64_t ldc) {
    scalar_panel_body<MP, NR>(A, ps, B, ldb, kw, kbits, C, ldc);
  }
};

template <int MR, int NR>
struct MkPopcnt {
  __attribute__((target("popcnt"))) static void run(const uint64_t* A, int64_t lda, const uint64_t* B,
                                                    int64_t ldb, int64_t kw, int32_t* C, int64_t ldc) {
    scalar_body<MR, NR>(A, lda, B, ldb, kw, C, ldc);
  }
};
#endif

}  // namespace

void popcount_block_portable(const uint64_t* A, int64_t lda, int64_t m, const uint64_t* B, int64_t ldb,
                             int64_t n, int64_t kw, int32_t* C, int64_t ldc) {
  block_driver<MkPortable, 2, 4>(A, lda, m, B, ldb, n, kw, C, ldc);
}

void popcount_panel_portable(const uint64_t* A, int64_t m, const uint64_t* B, int64_t ldb, int64_t n, int64_t kw,
                             int32_t kbits, int32_t* C, int64_t ldc) {
  panel_driver<PkPortable, 1, 2, 4>(A, m / 4, kw * 4, B, ldb, n, kw, kbits, C, ldc);
}

#if ONEBIT_X86
void popcount_panel_popcnt(const uint64_t* A, int64_t m, const uint64_t* B, int64_t ldb, int64_t n, int64_t kw,
                           int32_t kbits, int32_t* C, int64_t ldc) {
  panel_driver<PkPopcnt, 1, 2, 4>(A, m / 4, kw * 4, B, ldb, n, kw, kbits, C, ldc);
}

void popcount_block_popcnt(const uint64_t* A, int64_t lda, int64_t m, const uint64_t* B, int64_t ldb,
                           int64_t n, int64_t kw, int32_t* C, int64_t ldc) {
  block_driver<MkPopcnt, 2, 4>(A, lda, m, B, ldb, n, kw, C, ldc);
}
#endif

}  // namespace onebit
