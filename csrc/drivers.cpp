// GEMM / convolution drivers: tiling, threading, padding correction and the float epilogue.
//
// Binary convolution:
//   1. pack the input channels-last: P[n, h, w, g*Wg + j] (bits along the channels of each group,
//      the per-channel threshold shift fused);
//   2. bit-packed im2col: row i = (oh, ow) of image n, group g holds, tap-major, the Wg words of the
//      input pixel under each kernel tap, or Wg zero words where the tap falls outside the image;
//      rows are stored in panels of V interleaved rows (see PanelFn in engine.h).  On the AVX-512
//      and AVX2 paths, when each pixel is one word, the stride 1 and output rows whole panels, no
//      im2col: the tap kernel reads V consecutive pixels of a zero-padded copy of P per tap (TapFn);
//   3. popcount GEMM of those rows against the weights [F, KH*KW*Wg] (same tap-major layout), in
//      tiles of (group, filter block, image, pixel block) handed out to the threads; the kernel
//      returns raw = Kbits - 2 popcount with Kbits = KH*KW*Cg, i.e. every tap counted as inside;
//   4. padding correction: an out-of-image tap must contribute 0, but its zero word against weight
//      bits w contributes -sum_c sign(w[f, c, tap]) = -tapsum[f][tap].  So acc = raw + the sum of
//      tapsum[f][tap] over the pixel's out-of-image taps.  Pixels fall into a few border classes
//      (which kernel rows and columns are outside); one correction vector per class;
//   5. y = acc * scale[f] + bias[f] (-> ReLU, BatchNorm, + residual, RPReLU), written NCHW;
//   6. optionally the signs of y (+ the next layer's threshold shift) packed channels-last, the
//      next binary layer's step 1 done while the tile is in cache.
// Channel tails (Cg not a multiple of 64): the unused bits are 0 in both the activation and the
// weight words, so they xor to 0, and Kbits counts only real channels.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include "engine.h"

#if ONEBIT_X86
#include <immintrin.h>
#endif

namespace onebit {
namespace {

// Grow-only 64-byte aligned scratch buffers, one set per calling thread.
class Scratch {
 public:
  ~Scratch() {
    for (auto& b : bufs_) std::free(b.first);
  }
  template <typename T>
  T* get(int slot, int64_t count) {
    auto& b = bufs_[slot];
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    if (b.second < bytes) {
      std::free(b.first);
      b.first = nullptr;
      b.second = 0;
      const size_t cap = static_cast<size_t>(round_up(static_cast<int64_t>(bytes), 64));
      b.first = std::aligned_alloc(64, cap);
      if (!b.first) throw std::bad_alloc();
      b.second = cap;
    }
    return static_cast<T*>(b.first);
  }

 private:
  std::pair<void*, size_t> bufs_[4] = {};
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// a grow-only per-thread buffer of T for one tile
template <typename T = int32_t>
T* tile_buffer(int64_t count) {
  thread_local std::vector<T> t;
  if (static_cast<int64_t>(t.size()) < count) t.resize(count);
  return t.data();
}

bool packs_with_avx2(Path path) { return pack_isa(path) != Path::Portable; }

int64_t row_align(Path path) { return path == Path::AVX512 ? 8 : 4; }

// rows of the streamed operand per tile (its block stays in L1 while NR-wide slices of the other
// operand pass over it); a multiple of 8, hence of every panel width
int64_t rows_per_tile(int64_t kw) {
  const int64_t r = 16384 / (8 * std::max<int64_t>(kw, 1));
  return std::max<int64_t>(8, std::min<int64_t>(256, r / 8 * 8));
}

// Pixel rows per panel tile.  Each NR-wide slice of filters streams the whole A block, and each
// tile streams its filters once: when all rows of an image fit in about half of L2, take them all
// (the filters, possibly larger than L2, are then read once per image); otherwise L1-sized blocks
// (the filters are then few and stay cached).
int64_t panel_rows_per_tile(int64_t rows, int64_t step_words) {
  if (rows * step_words * 8 <= 192 * 1024) return rows;
  return std::min(rows, rows_per_tile(step_words));
}

// filters per tile: up to 64, fewer while there are not about 4 tiles per thread
int64_t filters_per_tile(int64_t nf, int64_t other_tiles, int nthreads) {
  int64_t fb = std::min<int64_t>(nf, 64);
  while (fb > 8 && other_tiles * ((nf + fb - 1) / fb) < 4 * nthreads) fb = (fb + 1) / 2;
  return fb;
}

// The float epilogue of one output channel, on n pixels: y = float(a[i]) * s + b, then (Relu) torch's
// ReLU, y < 0 ? 0 : y (-0 and NaN pass, as in torch), then (Bn) an eval
// BatchNorm as torch's CPU kernel applies it, y * alpha + beta with its own per-channel alpha and beta
// (Bn = 1: a product and a sum; Bn = 2: one fused multiply-add, as torch's FMA builds compute it; see
// bn_terms), then (Res) y + r[i], then (Act) RPReLU as torch computes it: t = y - gamma;
// (t > 0 ? t : slope * t) + zeta.  Every other step is its own rounded float operation (never
// fused), so the result is bit for bit the separate torch ops; o may alias r.  One body, compiled
// for the baseline and (8-wide) for AVX2 + FMA.
struct RPReLUParams {
  float gamma, slope, zeta;
};
struct ChannelParams {  // the per-channel constants of the epilogue
  float s, b;            // conv scale and bias
  float alpha, beta;     // BatchNorm (Bn > 0)
  RPReLUParams act;      // RPReLU (Act)
};
template <bool Res, bool Act, int Bn, bool Relu>
ONEBIT_INLINE void epilogue_body(const int32_t* a, const float* r, float* o, int64_t n, const ChannelParams& c) {
  for (int64_t i = 0; i < n; ++i) {
    float y = static_cast<float>(a[i]) * c.s + c.b;
    if (Relu) y = y < 0.0f ? 0.0f : y;
    if (Bn == 1) y = y * c.alpha + c.beta;
    if (Bn == 2) y = std::fma(y, c.alpha, c.beta);
    if (Res) y = y + r[i];
    if (Act) {
      const float t = y - c.act.gamma;
      y = (t > 0.0f ? t : c.act.slope * t) + c.act.zeta;
    }
    o[i] = y;
  }
}
template <bool Res, bool Act, int Bn, bool Relu>
void epilogue_portable(const int32_t* a, const float* r, float* o, int64_t n, const ChannelParams& c) {
  epilogue_body<Res, Act, Bn, Relu>(a, r, o, n, c);
}
#if ONEBIT_X86
template <bool Res, bool Act, int Bn, bool Relu>
__attribute__((target("avx2,fma"))) void epilogue_avx2(const int32_t* a, const float* r, float* o, int64_t n,
                                                       const ChannelParams& c) {
  epilogue_body<Res, Act, Bn, Relu>(a, r, o, n, c);
}
#endif
using EpilogueFn = void (*)(const int32_t*, const float*, float*, int64_t, const ChannelParams&);
template <bool Res, bool Act, int Bn, bool Relu>
EpilogueFn epilogue_for(Path path) {
#if ONEBIT_X86
  if (path != Path::Portable && cpu_features().avx2 && cpu_features().fma) return epilogue_avx2<Res, Act, Bn, Relu>;
#else
  (void)path;
#endif
  return epilogue_portable<Res, Act, Bn, Relu>;
}
template <int Bn, bool Relu>
EpilogueFn epilogue_bn(Path path, bool residual, bool rprelu) {
  if (rprelu) return residual ? epilogue_for<true, true, Bn, Relu>(path) : epilogue_for<false, true, Bn, Relu>(path);
  return residual ? epilogue_for<true, false, Bn, Relu>(path) : epilogue_for<false, false, Bn, Relu>(path);
}
template <bool Relu>
EpilogueFn epilogue_relu(Path path, bool residual, bool rprelu, int bn_mode) {
  if (bn_mode == 2) return epilogue_bn<2, Relu>(path, residual, rprelu);
  if (bn_mode == 1) return epilogue_bn<1, Relu>(path, residual, rprelu);
  return epilogue_bn<0, Relu>(path, residual, rprelu);
}
EpilogueFn epilogue_fn(Path path, bool residual, bool rprelu, int bn_mode, bool pre_relu) {
  return pre_relu ? epilogue_relu<true>(path, residual, rprelu, bn_mode)
                  : epilogue_relu<false>(path, residual, rprelu, bn_mode);
}

inline float scale_of(const float* scale, int64_t f) { return scale ? scale[f] : 1.0f; }
inline float bias_of(const float* bias, int64_t f) { return bias ? bias[f] : 0.0f; }

// out[m, n] (row-major, Nf columns) with the row kernels: the filters Wt stream through the
// microkernel, the packed inputs X form the NR-wide slices.
void gemm_rows(const uint64_t* Wt, int64_t Nf, int64_t ldw, const uint64_t* X, int64_t M, int64_t ldx, int64_t kw,
               int32_t Kbits, const float* scale, const float* bias, float* out_f, int32_t* out_i, Path path,
               int nthreads) {
  const BlockFn fn = block_fn(path);
  const int64_t fb = rows_per_tile(ldw), mb = 64;
  const int64_t fblocks = (Nf + fb - 1) / fb, mblocks = (M + mb - 1) / mb;
  parallel_for(fblocks * mblocks, nthreads, [&](int64_t t) {
    const int64_t fi = t % fblocks, mi = t / fblocks;
    const int64_t f0 = fi * fb, fc = std::min(fb, Nf - f0);
    const int64_t m0 = mi * mb, mc = std::min(mb, M - m0);
    int32_t* T = tile_buffer(fb * mb);
    fn(Wt + f0 * ldw, ldw, fc, X + m0 * ldx, ldx, mc, kw, T, fc);  // T[m * fc + f] = popcount
    for (int64_t m = 0; m < mc; ++m) {
      const int32_t* a = T + m * fc;
      if (out_f) {
        float* o = out_f + (m0 + m) * Nf + f0;
        for (int64_t j = 0; j < fc; ++j)
          o[j] = static_cast<float>(Kbits - 2 * a[j]) * scale_of(scale, f0 + j) + bias_of(bias, f0 + j);
      } else {
        int32_t* o = out_i + (m0 + m) * Nf + f0;
        for (int64_t j = 0; j < fc; ++j) o[j] = Kbits - 2 * a[j];
      }
    }
  });
}

// Weights as the panel kernel reads them: as they are, pre-split by the caller (wsplit, [Nf, 2 kw]),
// or nibble-split now into scratch slot 2.
const uint64_t* panel_weights(const PanelKernel& pk, const uint64_t* Wt, const uint64_t* wsplit, int64_t Nf,
                              int64_t ldw, int64_t kw, int64_t* ld_out, int nthreads) {
  if (!pk.split) {
    *ld_out = ldw;
    return Wt;
  }
  if (wsplit) {
    *ld_out = 2 * kw;
    return wsplit;
  }
  uint64_t* Ws = scratch().get<uint64_t>(2, Nf * 2 * kw);
  split_rows(Wt, Nf, ldw, kw, Ws, nthreads);
  *ld_out = 2 * kw;
  return Ws;
}

// out[m, n] with the panel kernels: Xp holds the inputs in panels of V rows (M padded to whole
// panels with zero rows, layout as pk wants it), the filters Wt are broadcast.
void gemm_panels(const uint64_t* Wt, const uint64_t* wsplit, int64_t Nf, int64_t ldw, const uint64_t* Xp, int64_t M,
                 int64_t kw, int32_t Kbits, const float* scale, const float* bias, float* out_f, int32_t* out_i,
                 Path path, int nthreads) {
  const PanelKernel pk = panel_kernel(path);
  const int64_t S = pk.split ? 2 : 1;
  int64_t ldb = 0;
  const uint64_t* Bw = panel_weights(pk, Wt, wsplit, Nf, ldw, kw, &ldb, nthreads);
  const int64_t Mp = round_up(M, pk.V);
  const int64_t mb = panel_rows_per_tile(Mp, kw * S), mblocks = (Mp + mb - 1) / mb;
  const int64_t fb = filters_per_tile(Nf, mblocks, nthreads), fblocks = (Nf + fb - 1) / fb;
  parallel_for(fblocks * mblocks, nthreads, [&](int64_t t) {
    const int64_t fi = t % fblocks, mi = t / fblocks;
    const int64_t f0 = fi * fb, fc = std::min(fb, Nf - f0);
    const int64_t m0 = mi * mb, mc = std::min(mb, M - m0), mp = std::min(mb, Mp - m0);
    int32_t* T = tile_buffer(fb * mb);
    pk.fn(Xp + m0 * kw * S, mp, Bw + f0 * ldb, ldb, fc, kw, Kbits, T, mp);  // T[f * mp + m] = acc
    for (int64_t m = 0; m < mc; ++m) {
      if (out_f) {
        float* o = out_f + (m0 + m) * Nf + f0;
        for (int64_t j = 0; j < fc; ++j)
          o[j] = static_cast<float>(T[j * mp + m]) * scale_of(scale, f0 + j) + bias_of(bias, f0 + j);
      } else {
        int32_t* o = out_i + (m0 + m) * Nf + f0;
        for (int64_t j = 0; j < fc; ++j) o[j] = T[j * mp + m];
      }
    }
  });
}

bool use_panels(Kernel kernel, int64_t M, Path path) {
  if (kernel == Kernel::Auto) return M >= 2 * panel_kernel(path).V;
  return kernel == Kernel::Panels;
}

// Valid tap range [lo, hi) of output coordinate o along one axis (lo == hi: none).
std::pair<int64_t, int64_t> valid_taps(int64_t o, int64_t stride, int64_t pad, int64_t dil, int64_t K, int64_t size) {
  int64_t lo = 0, hi = 0;
  bool seen = false;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t i = o * stride - pad + k * dil;
    if (i >= 0 && i < size) {
      if (!seen) lo = k;
      seen = true;
      hi = k + 1;
    }
  }
  if (!seen) lo = hi = 0;
  return {lo, hi};
}

}  // namespace

void bgemm(const uint64_t* A, int64_t M, int64_t lda, const uint64_t* B, int64_t N, int64_t ldb, int64_t K,
           int32_t* out, Path path, int nthreads, Kernel kernel) {
  const int64_t kw = words_for(K);
  const int32_t Kbits = static_cast<int32_t>(K);
  if (use_panels(kernel, M, path)) {
    const PanelKernel pk = panel_kernel(path);
    uint64_t* Ap = scratch().get<uint64_t>(0, round_up(M, pk.V) * kw * (pk.split ? 2 : 1));
    interleave_panels(A, M, lda, kw, pk.V, pk.split, Ap);
    gemm_panels(B, nullptr, N, ldb, Ap, M, kw, Kbits, nullptr, nullptr, nullptr, out, path, nthreads);
  } else {
    gemm_rows(B, N, ldb, A, M, lda, kw, Kbits, nullptr, nullptr, nullptr, out, path, nthreads);
  }
}

void linear(const float* x, int64_t M, int64_t K, int64_t ldx, const float* shift, const uint64_t* wbits,
            const uint64_t* wsplit, int64_t N, int64_t ldb, const float* scale, const float* bias, float* out_f,
            int32_t* out_i, Path path, int nthreads, Kernel kernel) {
  const int64_t kw = words_for(K);
  const int32_t Kbits = static_cast<int32_t>(K);
  const bool avx2 = packs_with_avx2(path);
  if (use_panels(kernel, M, path)) {
    const PanelKernel pk = panel_kernel(path);
    uint64_t* Xp = scratch().get<uint64_t>(0, round_up(M, pk.V) * kw * (pk.split ? 2 : 1));
    pack_rows_panels(x, M, K, ldx, shift, Xp, pk.V, pk.split, avx2, nthreads);
    gemm_panels(wbits, wsplit, N, ldb, Xp, M, kw, Kbits, scale, bias, out_f, out_i, path, nthreads);
  } else {
    const int64_t ldp = round_up(kw, row_align(path));
    uint64_t* Xp = scratch().get<uint64_t>(0, M * ldp);
    pack_rows(x, M, K, ldx, shift, Xp, ldp, avx2, nthreads);
    gemm_rows(wbits, N, ldb, Xp, M, ldp, kw, Kbits, scale, bias, out_f, out_i, path, nthreads);
  }
}

namespace {

// AVX2: n4 groups of 4 consecutive words src[4 g .. 4 g + 3] -> the lo and hi planes of panels dst + g * pstride
// (nibble-split layout, V = 4): dst[g * pstride + 0..3] = lo words, dst[g * pstride + 4..7] = hi words.
#if ONEBIT_X86
__attribute__((target("avx2"))) void split4_avx2(const uint64_t* src, int64_t n4, uint64_t* dst, int64_t pstride) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  for (int64_t g = 0; g < n4; ++g, src += 4, dst += pstride) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst), _mm256_and_si256(w, low));
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst + 4), _mm256_and_si256(_mm256_srli_epi64(w, 4), low));
  }
}
#else
void split4_avx2(const uint64_t* src, int64_t n4, uint64_t* dst, int64_t pstride) {  // never called without x86
  for (int64_t g = 0; g < n4; ++g, src += 4, dst += pstride)
    for (int r = 0; r < 4; ++r) {
      dst[r] = nib_lo(src[r]);
      dst[4 + r] = nib_hi(src[r]);
    }
}
#endif

// Bit-packed im2col into panels of V interleaved rows.  Row i (= oh * OW + ow) of one image and
// group holds, tap-major, the Wg words of the input pixel under each tap (zero words where the tap
// is outside the image); in the panel layout word w of row i sits at
// ((i - i0) / V) * kw * V * S + w * V * S + (i - i0) % V  (+ V for the hi plane of the split layout).
struct Im2col {
  const uint64_t* P;  // packed input [N, H, W, G * Wg]
  int64_t H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
  int64_t Wg, ldp, kw, V, OHW;
  bool split;
  bool avx2;  // the CPU has AVX2 and the path may use it

  // rows [i0, i1) of image n, group g (i0 a multiple of V; rows >= OHW come out zero) -> dst
  void rows(int64_t n, int64_t g, int64_t i0, int64_t i1, uint64_t* dst) const {
    // local copies: the uint64 stores below may alias int64 members as far as the compiler knows
    const int64_t H_ = H, W_ = W, OW_ = OW, KH_ = KH, KW_ = KW, sh_ = sh, sw_ = sw, ph_ = ph, pw_ = pw;
    const int64_t dh_ = dh, dw_ = dw, wg = Wg, lp = ldp, kwv = kw, v = V, ohw = OHW;
    const bool sp = split;
    const int64_t s = sp ? 2 : 1, vs = v * s;
    const int vshift = v == 8 ? 3 : 2;
    auto at = [=](int64_t i) { const int64_t l = i - i0; return dst + (l >> vshift) * kwv * vs + (l & (v - 1)); };
    auto put = [=](uint64_t* d, uint64_t word) {
      if (sp) {
        d[0] = nib_lo(word);
        d[v] = nib_hi(word);
      } else {
        d[0] = word;
      }
    };
    const bool vec4 = sp && v == 4 && avx2;
    const int64_t iend = std::min(i1, ohw);
    for (int64_t oh = i0 / OW_; oh * OW_ < iend; ++oh) {
      const int64_t owa = std::max<int64_t>(0, i0 - oh * OW_), owb = std::min<int64_t>(OW_, iend - oh * OW_);
      const int64_t ib = oh * OW_;
      for (int64_t kh = 0; kh < KH_; ++kh) {
        const int64_t ih = oh * sh_ - ph_ + kh * dh_;
        const bool row_in = ih >= 0 && ih < H_;
        const uint64_t* srow = P + (n * H_ + (row_in ? ih : 0)) * W_ * lp + g * wg;
        for (int64_t kx = 0; kx < KW_; ++kx) {
          const int64_t toff = (kh * KW_ + kx) * wg * vs;
          const int64_t off = kx * dw_ - pw_;  // iw = ow * sw + off
          int64_t lo = owa, hi = owa;           // in-image columns [lo, hi) of [owa, owb)
          if (row_in) {
            lo = std::max(owa, off >= 0 ? 0 : (-off + sw_ - 1) / sw_);
            hi = std::min(owb, W_ - 1 - off >= 0 ? (W_ - 1 - off) / sw_ + 1 : 0);
            lo = std::min(lo, std::max(hi, owa));
            hi = std::max(hi, lo);
          }
          for (int64_t ow = owa; ow < lo; ++ow)
            for (int64_t j = 0; j < wg; ++j) put(at(ib + ow) + toff + j * vs, 0);
          if (wg == 1) {
            const uint64_t* src = srow + (lo * sw_ + off) * lp;
            const int64_t step = sw_ * lp;
            int64_t ow = lo;
            if (vec4 && step == 1) {  // whole panels of 4 contiguous words: split with AVX2
              for (; ow < hi && ((ib + ow - i0) & 3) != 0; ++ow, ++src) put(at(ib + ow) + toff, *src);
              const int64_t n4 = (hi - ow) / 4;
              if (n4 > 0) {
                split4_avx2(src, n4, at(ib + ow) + toff, kwv * vs);
                ow += 4 * n4;
                src += 4 * n4;
              }
            }
            if (!sp && step == 1) {  // whole panels of V contiguous words: one block copy each
              for (; ow < hi && ((ib + ow - i0) & (v - 1)) != 0; ++ow, ++src) put(at(ib + ow) + toff, *src);
              for (; ow + v <= hi; ow += v, src += v) {  // (constant sizes: inlined moves)
                if (v == 8) std::memcpy(at(ib + ow) + toff, src, 64);
                else std::memcpy(at(ib + ow) + toff, src, 32);
              }
            }
            for (; ow < hi; ++ow, src += step) put(at(ib + ow) + toff, *src);
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) {
              uint64_t* d = at(ib + ow) + toff;
              const uint64_t* src = srow + (ow * sw_ + off) * lp;
              for (int64_t j = 0; j < wg; ++j) put(d + j * vs, src[j]);
            }
          }
          for (int64_t ow = hi; ow < owb; ++ow)
            for (int64_t j = 0; j < wg; ++j) put(at(ib + ow) + toff + j * vs, 0);
        }
      }
    }
    for (int64_t i = std::max(i0, ohw); i < i1; ++i) {  // padding rows of the last panel
      uint64_t* d = at(i);
      for (int64_t w = 0; w < kwv; ++w) put(d + w * vs, 0);
    }
  }
};

uint64_t* thread_block(int64_t words) {
  thread_local Scratch s;
  return s.get<uint64_t>(0, words);
}

// Padding correction (step 4): corr[k * F + f] for border class k, and the runs of consecutive
// output pixels of one class that have a correction, in ascending order (built in time proportional
// to their number: interior pixels are never visited; a 3x3 pad-1 map has 3 + 2 (OH - 2) + 3 runs).
struct Border {
  struct Run {
    int64_t begin, end;  // output pixels [begin, end)
    int32_t cls;
  };
  std::vector<int32_t> corr;
  std::vector<Run> runs;

  Border(const ConvParams& p, const int32_t* tapsum) {
    std::vector<int> rcls(p.OH), ccls(p.OW);
    std::vector<std::pair<int64_t, int64_t>> rkeys, ckeys;
    auto classify = [](std::vector<std::pair<int64_t, int64_t>>& keys, std::pair<int64_t, int64_t> k) {
      for (size_t i = 0; i < keys.size(); ++i)
        if (keys[i] == k) return static_cast<int>(i);
      keys.push_back(k);
      return static_cast<int>(keys.size() - 1);
    };
    for (int64_t oh = 0; oh < p.OH; ++oh) rcls[oh] = classify(rkeys, valid_taps(oh, p.sh, p.ph, p.dh, p.KH, p.H));
    for (int64_t ow = 0; ow < p.OW; ++ow) ccls[ow] = classify(ckeys, valid_taps(ow, p.sw, p.pw, p.dw, p.KW, p.W));
    const int64_t nrc = static_cast<int64_t>(rkeys.size()), ncc = static_cast<int64_t>(ckeys.size());
    const int64_t taps = p.KH * p.KW;
    corr.assign(nrc * ncc * p.F, 0);
    std::vector<int64_t> outside;  // taps outside the image for one class
    for (int64_t r = 0; r < nrc; ++r) {
      for (int64_t c = 0; c < ncc; ++c) {
        outside.clear();
        for (int64_t kh = 0; kh < p.KH; ++kh)
          for (int64_t kx = 0; kx < p.KW; ++kx)
            if (!(kh >= rkeys[r].first && kh < rkeys[r].second && kx >= ckeys[c].first && kx < ckeys[c].second))
              outside.push_back(kh * p.KW + kx);
        int32_t* cr = corr.data() + (r * ncc + c) * p.F;
        for (int64_t f = 0; f < p.F; ++f) {
          int32_t sum = 0;
          for (int64_t t : outside) sum += tapsum[f * taps + t];
          cr[f] = sum;
        }
      }
    }
    // a pixel has outside taps unless both its row and its column see every tap
    const std::pair<int64_t, int64_t> rfull{0, p.KH}, cfull{0, p.KW};
    std::vector<int64_t> bcols;  // columns with outside taps
    for (int64_t ow = 0; ow < p.OW; ++ow)
      if (ckeys[ccls[ow]] != cfull) bcols.push_back(ow);
    auto add = [&](int64_t pixel, int32_t k) {
      if (!runs.empty() && runs.back().end == pixel && runs.back().cls == k)
        ++runs.back().end;
      else
        runs.push_back({pixel, pixel + 1, k});
    };
    for (int64_t oh = 0; oh < p.OH; ++oh) {
      const int32_t k0 = static_cast<int32_t>(rcls[oh] * ncc);
      if (rkeys[rcls[oh]] != rfull) {
        for (int64_t ow = 0; ow < p.OW; ++ow) add(oh * p.OW + ow, k0 + ccls[ow]);
      } else {
        for (int64_t ow : bcols) add(oh * p.OW + ow, k0 + ccls[ow]);
      }
    }
  }

  // T[j * ldt + i] += correction of output pixel pix0 + i and filter f0 + j (i < n, j < fc)
  void apply(int32_t* T, int64_t ldt, int64_t pix0, int64_t n, int64_t F, int64_t f0, int64_t fc) const {
    auto r = std::upper_bound(runs.begin(), runs.end(), pix0, [](int64_t v, const Run& x) { return v < x.end; });
    for (; r != runs.end() && r->begin < pix0 + n; ++r) {
      const int64_t b = std::max(r->begin, pix0) - pix0, e = std::min(r->end, pix0 + n) - pix0;
      const int32_t* cr = corr.data() + r->cls * F + f0;
      for (int64_t j = 0; j < fc; ++j) {
        int32_t* t = T + j * ldt;
        const int32_t v = cr[j];
        for (int64_t i = b; i < e; ++i) t[i] += v;
      }
    }
  }
};

}  // namespace

void conv2d(const ConvParams& p, const float* x, const float* shift, const uint64_t* wbits, const uint64_t* wsplit,
            const int32_t* tapsum, const float* scale, const float* bias, float* out_f, int32_t* out_i, Path path,
            int nthreads, const float* residual, const float* rprelu, const uint64_t* xbits, uint64_t* out_bits,
            const float* out_shift, const float* bn, int bn_mode, bool pre_relu) {
  const int64_t G = p.groups, Cg = p.C / G, Fg = p.F / G, Wg = words_for(Cg);
  const int64_t taps = p.KH * p.KW, kw = taps * Wg;
  const int32_t Kbits = static_cast<int32_t>(taps * Cg);
  const int64_t HW = p.H * p.W, OHW = p.OH * p.OW, ldp = G * Wg;
  const PanelKernel pk = panel_kernel(path);
  const int64_t V = pk.V, S = pk.split ? 2 : 1;
  const int64_t Mimg = round_up(OHW, V);  // rows per image, padded to whole panels

  // 1. pack the input channels-last (unless it comes packed: xbits)
  const uint64_t* P = xbits;
  if (!P) {
    uint64_t* Pw = scratch().get<uint64_t>(0, p.N * HW * ldp);
    pack_nchw(x, p.N, p.C, p.H, p.W, p.xstrides, shift, G, Pw, pack_isa(path), nthreads);
    P = Pw;
  }

  const Im2col im2col{P, p.H, p.W, p.OH, p.OW, p.KH, p.KW, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw,
                      Wg, ldp, kw, V, OHW, pk.split, packs_with_avx2(path)};

  // 2. tiles: (group, filter block, image, pixel block).  When an image's rows fit in about half
  //    of L2, its whole im2col block is built once (shared by the filter blocks); otherwise each
  //    tile builds its own L1-sized block of rows right before using it, so the (large) im2col
  //    matrix never travels through memory.
  //    Direct convolution instead, where the path has a tap kernel, each pixel is one word (one
  //    group of at most 64 channels), the stride is 1 and output rows are whole panels: the kernel
  //    reads V consecutive pixels of a zero-padded copy of P for each tap (zero words outside the
  //    image, as im2col writes them), tiles are whole output rows, and there is no im2col.  One copy
  //    per kernel column, shifted so that its taps read aligned panels: unaligned 64-byte loads
  //    split cache lines, which measured 7% of the whole 64 -> 64 @ 56x56 layer on Zen 5.
  const bool direct = pk.taps && ldp == 1 && p.sh == 1 && p.sw == 1 && p.OW % V == 0;
  const int64_t Hp = p.OH + (p.KH - 1) * p.dh;  // padded input rows (direct)
  const int64_t mb = direct ? std::min(OHW, std::max<int64_t>(1, rows_per_tile(kw * S) / p.OW) * p.OW)
                            : panel_rows_per_tile(Mimg, kw * S);  // whole panels (or output rows)
  const bool shared = !direct && mb == Mimg;
  const int64_t mblocks = (OHW + mb - 1) / mb;
  uint64_t* A = nullptr;
  std::vector<int64_t> tap_off;
  if (direct) {
    // one zero-padded copy of the packed input per kernel column kx, shifted left by kx * dw words
    // and OW words wide (a multiple of V): every tap then reads whole, aligned panels.  On the split
    // layout each row is OW / 4 panels of 4 lo then 4 hi words (S OW words), as im2col's panels
    // of one word: the tap kernel is the panel kernel with tap offsets, no im2col.
    const int64_t ldr = p.OW * S, plane = p.N * Hp * ldr;
    A = scratch().get<uint64_t>(1, p.KW * plane);
    uint64_t* tmp = pk.split ? tile_buffer<uint64_t>(p.OW) : nullptr;  // a plain row, then split
    for (int64_t kx = 0; kx < p.KW; ++kx) {
      const int64_t sh = kx * p.dw - p.pw;  // input column of output column 0 for this copy
      const int64_t c0 = std::min(p.OW, std::max<int64_t>(0, -sh)), c1 = std::max(c0, std::min(p.OW, p.W - sh));
      for (int64_t r = 0; r < p.N * Hp; ++r) {
        uint64_t* d = A + kx * plane + r * ldr;
        const int64_t ih = r % Hp - p.ph;
        if (ih < 0 || ih >= p.H || c0 == c1) {
          std::memset(d, 0, sizeof(uint64_t) * ldr);  // (zero splits to zero)
          continue;
        }
        uint64_t* e = pk.split ? tmp : d;
        std::memset(e, 0, sizeof(uint64_t) * c0);
        std::memcpy(e + c0, P + ((r / Hp) * p.H + ih) * p.W + (c0 + sh), sizeof(uint64_t) * (c1 - c0));
        std::memset(e + c1, 0, sizeof(uint64_t) * (p.OW - c1));
        if (pk.split) split4_avx2(tmp, p.OW / 4, d, 8);
      }
    }
    for (int64_t kh = 0; kh < p.KH; ++kh)
      for (int64_t kx = 0; kx < p.KW; ++kx) tap_off.push_back(kx * plane + kh * p.dh * ldr);
  } else if (shared) {
    A = scratch().get<uint64_t>(1, G * p.N * Mimg * kw * S);
    const int64_t chunk = std::max<int64_t>(V, round_up(std::max<int64_t>(1, 4096 / (kw * S)), V));
    const int64_t nch = (Mimg + chunk - 1) / chunk;
    parallel_for(G * p.N * nch, nthreads, [&](int64_t t) {
      const int64_t c = t % nch, gn = t / nch, i0 = c * chunk, i1 = std::min(Mimg, i0 + chunk);
      im2col.rows(gn % p.N, gn / p.N, i0, i1, A + (gn * Mimg + i0) * kw * S);
    });
  }

  const Border bd(p, tapsum);

  // 3 + 5. popcount GEMM per tile, padding correction, epilogue
  int64_t ldb = 0;
  const uint64_t* Bw = panel_weights(pk, wbits, wsplit, p.F, p.ldb, kw, &ldb, nthreads);
  // with out_bits, a tile holding whole 64-filter words stores them; otherwise tiles OR their bits in
  const int64_t fb = out_bits ? std::min<int64_t>(Fg, 64) : filters_per_tile(Fg, G * p.N * mblocks, nthreads);
  const int64_t fblocks = (Fg + fb - 1) / fb;
  const int64_t wf = words_for(p.F);
  // tiles own whole words of out_bits unless a word holds filters of two groups: then the bits are
  // packed from the float result afterwards (into a scratch buffer when out_f is null)
  const bool bits_fused = out_bits && (G == 1 || Fg % 64 == 0);
  if (out_bits && !bits_fused && !out_f) out_f = scratch().get<float>(3, p.N * p.F * OHW);
  const EpilogueFn epilogue = epilogue_fn(path, residual != nullptr, rprelu != nullptr, bn ? bn_mode : 0, pre_relu);
  const int64_t ntasks = G * fblocks * p.N * mblocks;
  parallel_for(ntasks, nthreads, [&](int64_t t) {
    const int64_t mi = t % mblocks;
    t /= mblocks;
    const int64_t n = t % p.N;
    t /= p.N;
    const int64_t fi = t % fblocks, g = t / fblocks;
    const int64_t p0 = mi * mb, mc = std::min(mb, OHW - p0), mp = std::min(mb, Mimg - p0);
    const int64_t f0 = g * Fg + fi * fb, fc = std::min(fb, Fg - fi * fb);
    int32_t* T = tile_buffer(mb * fb);
    if (direct) {  // output rows p0 / OW ..: raw acc, in one call (the rows of a copy are contiguous)
      pk.taps(A + (n * Hp + p0 / p.OW) * p.OW * S, mc / V, tap_off.data(), Bw + f0 * ldb, ldb, fc, kw, Kbits, T, mp);
    } else {
      const uint64_t* Ab;
      if (shared) {
        Ab = A + ((g * p.N + n) * Mimg + p0) * kw * S;
      } else {
        uint64_t* blk = thread_block(mp * kw * S);
        im2col.rows(n, g, p0, p0 + mp, blk);
        Ab = blk;
      }
      pk.fn(Ab, mp, Bw + f0 * ldb, ldb, fc, kw, Kbits, T, mp);  // raw acc
    }
    bd.apply(T, mp, p0, mc, p.F, f0, fc);
    // the float results go to out_f, or (bits only) to a tile buffer: y of filter f0 + j, pixel p0 + i
    // at yb[j * ys + i]
    float* yb = out_f ? out_f + (n * p.F + f0) * OHW + p0 : tile_buffer<float>(fc * mc);
    const int64_t ys = out_f ? OHW : mc;
    for (int64_t j = 0; j < fc; ++j) {
      const int32_t* a = T + j * mp;
      const int64_t f = f0 + j, o = (n * p.F + f) * OHW + p0;
      if (out_i) {
        std::memcpy(out_i + o, a, sizeof(int32_t) * mc);
      } else {
        const ChannelParams c{scale_of(scale, f), bias_of(bias, f), bn ? bn[f] : 1.0f, bn ? bn[p.F + f] : 0.0f,
                              rprelu ? RPReLUParams{rprelu[f], rprelu[p.F + f], rprelu[2 * p.F + f]}
                                     : RPReLUParams{0.0f, 0.0f, 0.0f}};
        epilogue(a, residual ? residual + o : nullptr, yb + j * ys, mc, c);
      }
    }
    // 6. the signs of the result, channels-last, for the next binary layer
    if (bits_fused)  // f0 is a multiple of 64 here: the tile's filters fill whole words from word f0 / 64
      pack_pixels(yb, ys, mc, out_shift ? out_shift + f0 : nullptr, fc, out_bits + (n * OHW + p0) * wf + f0 / 64, wf,
                  pack_isa(path));
  });
  if (out_bits && !bits_fused) {
    const int64_t ys[4] = {p.F * OHW, OHW, p.OW, 1};
    pack_nchw(out_f, p.N, p.F, p.OH, p.OW, ys, out_shift, 1, out_bits, pack_isa(path), nthreads);
  }
}

void bn_terms(const float* weight, const float* bias, const float* mean, const float* var, float eps, int64_t F,
              bool fma, float* alpha, float* beta) {
  for (int64_t f = 0; f < F; ++f) {
    const float invstd = 1.0f / std::sqrt(var[f] + eps);
    alpha[f] = invstd * weight[f];
    beta[f] = fma ? std::fma(-mean[f], alpha[f], bias[f]) : bias[f] - mean[f] * alpha[f];
  }
}

}  // namespace onebit
