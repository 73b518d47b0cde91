// Register-blocked drivers shared by every path.
//
// Row kernels  MK<MR, NR>::run(A, lda, B, ldb, kw, C, ldc): popcount sums of MR rows of A against
//              NR rows of B, both row-major, stored at C[j * ldc + i].
// Panel kernels MK<MP, NR>::run(A, ps, B, ldb, kw, kbits, C, ldc): MP panels of V interleaved rows
//              (panel stride ps words) against NR broadcast rows of B, storing kbits - 2 popcount.
// The drivers walk a block in NR-wide slices of B (kept hot in L1) and stream the A block past
// each slice; edge tiles go to the smaller instantiations (no wasted work).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace onebit {

// off[w] = 8 w for w < kw: where word w of an interleaved panel starts, for panel kernels that
// take an offset table (so that the same kernel also runs a direct convolution's tap offsets).
// Both interleaved layouts store 8 words per reduction word: 8 rows (AVX-512), or 4 rows as 4 lo
// and 4 hi nibble words (AVX2).  One table per thread, grown on demand.
inline const int64_t* panel_offsets(int64_t kw) {
  thread_local std::vector<int64_t> off;
  if (static_cast<int64_t>(off.size()) < kw) {
    off.resize(kw);
    for (int64_t w = 0; w < kw; ++w) off[w] = 8 * w;
  }
  return off.data();
}

inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}

template <template <int, int> class MK, int MR, int NR>
struct DispatchN {
  template <typename... Args>
  static void run(int nr, Args... args) {
    if (nr == NR) {
      MK<MR, NR>::run(args...);
    } else if constexpr (NR > 1) {
      DispatchN<MK, MR, NR - 1>::run(nr, args...);
    }
  }
};

template <template <int, int> class MK, int MR, int NR>
struct DispatchM {
  template <typename... Args>
  static void run(int mr, int nr, Args... args) {
    if (mr == MR) {
      DispatchN<MK, MR, NR>::run(nr, args...);
    } else if constexpr (MR > 1) {
      DispatchM<MK, MR - 1, NR>::run(mr, nr, args...);
    }
  }
};

template <template <int, int> class MK, int MR, int NR>
inline void block_driver(const uint64_t* A, int64_t lda, int64_t m, const uint64_t* B, int64_t ldb,
                         int64_t n, int64_t kw, int32_t* C, int64_t ldc) {
  for (int64_t j = 0; j < n; j += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, n - j));
    const uint64_t* Bj = B + j * ldb;
    int32_t* Cj = C + j * ldc;
    int64_t i = 0;
    if (nr == NR) {
      for (; i + MR <= m; i += MR) MK<MR, NR>::run(A + i * lda, lda, Bj, ldb, kw, Cj + i, ldc);
    }
    for (; i < m; i += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, m - i));
      DispatchM<MK, MR, NR>::run(mr, nr, A + i * lda, lda, Bj, ldb, kw, Cj + i, ldc);
    }
  }
}

// A in np panels of V rows (see engine.h), panel q at A + q * ps, S words per row and step (2 when
// the path splits nibbles); extra arguments go to every kernel call after the usual ones (the
// AVX-512 kernel's tap offsets).
template <template <int, int> class MK, int MP, int NR, int V, int S = 1, typename... Extra>
inline void panel_driver(const uint64_t* A, int64_t np, int64_t ps, const uint64_t* B, int64_t ldb, int64_t n,
                         int64_t kw, int32_t kbits, int32_t* C, int64_t ldc, Extra... extra) {
  for (int64_t j = 0; j < n; j += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, n - j));
    const uint64_t* Bj = B + j * ldb;
    int32_t* Cj = C + j * ldc;
    // the next slice of B (read by broadcasts, several rows at once: prefetchers track it poorly)
    if (np > 1) {
      const int64_t nn = std::min<int64_t>(NR, n - j - NR);
      for (int64_t r = 0; r < nn; ++r)
        for (int64_t w = 0; w < kw * S; w += 8) prefetch(Bj + (NR + r) * ldb + w);
    }
    int64_t q = 0;
    if (nr == NR) {
      for (; q + MP <= np; q += MP) MK<MP, NR>::run(A + q * ps, ps, Bj, ldb, kw, kbits, Cj + q * V, ldc, extra...);
    }
    for (; q < np; q += MP) {
      const int mp = static_cast<int>(std::min<int64_t>(MP, np - q));
      DispatchM<MK, MP, NR>::run(mp, nr, A + q * ps, ps, Bj, ldb, kw, kbits, Cj + q * V, ldc, extra...);
    }
  }
}

}  // namespace onebit
