// Exact float pooling for packed models (contiguous NCHW, float32), bit for bit what torch's CPU
// kernels return:
//   max:     the first maximum of the in-image taps in row-major order, NaN if any tap is NaN
//            (torch: val > max || isnan(val)); computed separably (rows first, then columns), which
//            gives the same value (a max does not round; only which of +0.0 / -0.0 is kept may differ,
//            and they compare equal);
//   average: no padding, floor mode: sum = 0, sum += x in row-major tap order, out = 0 + sum / (KH*KW),
//            the float32 operations and order of torch's cpu_avg_pool.
// Planes (n, c) are spread over the threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine.h"

#if ONEBIT_X86
#include <immintrin.h>
#endif

namespace onebit {
namespace {

inline float max_nan(float m, float v) { return (v > m || v != v) ? v : m; }

void max_row_portable(float* m, const float* r, int64_t n) {
  for (int64_t j = 0; j < n; ++j) m[j] = max_nan(m[j], r[j]);
}
void add_row_portable(float* s, const float* r, int64_t n) {
  for (int64_t j = 0; j < n; ++j) s[j] += r[j];
}
#if ONEBIT_X86
// m = (r > m || r is NaN) ? r : m, 8 lanes at a time
__attribute__((target("avx2"))) void max_row_avx2(float* m, const float* r, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 a = _mm256_loadu_ps(m + j), v = _mm256_loadu_ps(r + j);
    const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, a, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    _mm256_storeu_ps(m + j, _mm256_blendv_ps(a, v, take));
  }
  for (; j < n; ++j) m[j] = max_nan(m[j], r[j]);
}
__attribute__((target("avx2"))) void add_row_avx2(float* s, const float* r, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_add_ps(_mm256_loadu_ps(s + j), _mm256_loadu_ps(r + j)));
  for (; j < n; ++j) s[j] += r[j];
}
#endif

using RowFn = void (*)(float*, const float*, int64_t);

// t[j] = r[j * step] (the taps of one kernel column along a pooled row)
void gather_portable(float* t, const float* r, int64_t step, int64_t n) {
  for (int64_t j = 0; j < n; ++j) t[j] = r[j * step];
}
#if ONEBIT_X86
__attribute__((target("avx2"))) void gather_avx2(float* t, const float* r, int64_t step, int64_t n) {
  int64_t j = 0;
  if (step == 2) {  // even elements of 16 floats: shuffle within lanes, then order the 64-bit halves
    for (; j + 9 <= n; j += 8) {  // reads r[2j .. 2j+15], all before r[2(n-1)], the last tap needed
      const __m256 a = _mm256_loadu_ps(r + 2 * j), b = _mm256_loadu_ps(r + 2 * j + 8);
      const __m256 e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
      _mm256_storeu_ps(t + j, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
    }
  }
  for (; j < n; ++j) t[j] = r[j * step];
}
#endif
using GatherFn = void (*)(float*, const float*, int64_t, int64_t);

bool use_avx2(Path path) { return ONEBIT_X86 && path != Path::Portable && cpu_features().avx2; }

}  // namespace

void maxpool2d(const float* x, int64_t planes, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
               int64_t ph, int64_t pw, int64_t OH, int64_t OW, float* out, Path path, int nthreads) {
  RowFn max_row = max_row_portable;
#if ONEBIT_X86
  if (use_avx2(path)) max_row = max_row_avx2;
#endif
  const float ninf = -std::numeric_limits<float>::infinity();
  // per output row: m = the column maxima over the window's in-image rows, stored -inf padded
  // (pw on the left, up to the last tap on the right) and split into sw phases,
  // phase[r][j] = m_pad[j * sw + r], so that tap kw of output ow is phase[kw % sw][ow + kw / sw]:
  // every tap is one unit-stride row operation.
  const int64_t Wp = std::max<int64_t>((OW - 1) * sw + KW, W + pw);
  const int64_t plen = (Wp + sw - 1) / sw;
  parallel_for(planes, nthreads, [&](int64_t pl) {
    thread_local std::vector<float> buf;
    const size_t need = static_cast<size_t>(W + sw * plen);
    if (buf.size() < need) buf.resize(need);
    float* m = buf.data();
    float* ph_ = m + W;  // sw phases of plen
    const float* xp = x + pl * H * W;
    float* op = out + pl * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t h0 = oh * sh - ph;
      const int64_t ha = std::max<int64_t>(h0, 0), hb = std::min<int64_t>(h0 + KH, H);
      std::copy(xp + ha * W, xp + ha * W + W, m);  // ha < hb: padding is at most half the kernel
      for (int64_t h = ha + 1; h < hb; ++h) max_row(m, xp + h * W, W);
      for (int64_t r = 0; r < sw; ++r) {  // padded position j * sw + r -> column c = j * sw + r - pw
        float* d = ph_ + r * plen;
        const int64_t c0 = r - pw;
        const int64_t ja = c0 >= 0 ? 0 : (-c0 + sw - 1) / sw;                        // first j with c >= 0
        const int64_t jb = std::max<int64_t>(ja, std::min<int64_t>(plen, (W - 1 - c0) / sw + 1));  // c < W
        for (int64_t j = 0; j < ja; ++j) d[j] = ninf;
        const float* src = m + c0;
        if (sw == 1) {
          std::copy(src + ja, src + jb, d + ja);
        } else if (sw == 2) {
          for (int64_t j = ja; j < jb; ++j) d[j] = src[2 * j];
        } else {
          for (int64_t j = ja; j < jb; ++j) d[j] = src[j * sw];
        }
        for (int64_t j = jb; j < plen; ++j) d[j] = ninf;
      }
      float* o = op + oh * OW;
      std::copy(ph_, ph_ + OW, o);
      for (int64_t kw = 1; kw < KW; ++kw) max_row(o, ph_ + (kw % sw) * plen + kw / sw, OW);
    }
  });
}

void avgpool2d(const float* x, int64_t planes, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
               int64_t OH, int64_t OW, float* out, Path path, int nthreads) {
  RowFn add_row = add_row_portable;
  GatherFn gather = gather_portable;
#if ONEBIT_X86
  if (use_avx2(path)) {
    add_row = add_row_avx2;
    gather = gather_avx2;
  }
#endif
  const float div = static_cast<float>(KH * KW);
  parallel_for(planes, nthreads, [&](int64_t pl) {
    thread_local std::vector<float> acc;
    if (static_cast<int64_t>(acc.size()) < 2 * OW) acc.resize(2 * OW);
    float* s = acc.data();
    float* t = s + OW;
    const float* xp = x + pl * H * W;
    float* op = out + pl * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      // sum in torch's order: taps row-major, i.e. (kh, kw) = (0,0), (0,1), ..., (1,0), ...; each tap
      // is added to all outputs of the row at once (the same sequence of roundings per output)
      std::fill(s, s + OW, 0.0f);
      for (int64_t kh = 0; kh < KH; ++kh) {
        const float* row = xp + (oh * sh + kh) * W;
        for (int64_t kw = 0; kw < KW; ++kw) {
          if (sw == 1) {
            add_row(s, row + kw, OW);
          } else {
            gather(t, row + kw, sw, OW);  // t[ow] = row[ow * sw + kw]
            add_row(s, t, OW);
          }
        }
      }
      float* o = op + oh * OW;
      for (int64_t ow = 0; ow < OW; ++ow) o[ow] = 0.0f + s[ow] / div;
    }
  });
}

}  // namespace onebit
