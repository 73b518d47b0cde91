// onebit XNOR-popcount engine: shared declarations.
//
// Bit convention (the whole engine): a bit is 1 for +1 (value >= 0, -0.0 included) and 0 for -1.
// For two packed rows a, b of K real bits, sum_k s(a_k) s(b_k) = K - 2 popcount(a xor b).
// Invariant: the unused bits of every packed word (beyond K, or beyond the channels of a word)
// are 0 in BOTH operands, so their xor is 0 and they add nothing to the popcount; K itself
// counts only the real bits.  Zero words that pad a row to an aligned stride obey the same rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

// ONEBIT_X86: x86-64 with GCC / Clang builtins and target attributes.  Define ONEBIT_NO_X86 to build
// the portable path alone (what a non-x86 build gets), e.g. to test it on x86.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ONEBIT_NO_X86)
#define ONEBIT_X86 1
#else
#define ONEBIT_X86 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ONEBIT_INLINE inline __attribute__((always_inline))
#else
#define ONEBIT_INLINE inline
#endif

namespace onebit {

enum class Path { Portable = 0, AVX2 = 1, AVX512 = 2 };

// Which kernel family a GEMM uses: row kernels (vector along K; best for few rows, e.g. batch-1
// linear layers), panel kernels (vector across rows), or Auto (panels once M >= 2 V).
enum class Kernel { Auto = 0, Rows = 1, Panels = 2 };

struct CpuFeatures {
  bool popcnt = false;
  bool avx2 = false;
  bool avx512_vpopcntdq = false;  // avx512f + avx512bw + avx512vpopcntdq, OS-enabled
  bool fma = false;               // the float epilogue's 8-wide build uses it (BatchNorm as torch fuses it)
};

const CpuFeatures& cpu_features();
bool path_available(Path p);
Path best_path();
const char* path_name(Path p);
Path parse_path(const std::string& name);  // "auto" -> best_path(); throws std::invalid_argument

// ---- popcount blocks -------------------------------------------------------------------------
// C[j * ldc + i] = sum_{w < kw} popcount(A[i * lda + w] ^ B[j * ldb + w]) for i < m, j < n.
using BlockFn = void (*)(const uint64_t* A, int64_t lda, int64_t m, const uint64_t* B, int64_t ldb,
                         int64_t n, int64_t kw, int32_t* C, int64_t ldc);
BlockFn block_fn(Path p);

void popcount_block_portable(const uint64_t*, int64_t, int64_t, const uint64_t*, int64_t, int64_t,
                             int64_t, int32_t*, int64_t);
#if ONEBIT_X86
void popcount_block_popcnt(const uint64_t*, int64_t, int64_t, const uint64_t*, int64_t, int64_t,
                           int64_t, int32_t*, int64_t);
void popcount_block_avx2(const uint64_t*, int64_t, int64_t, const uint64_t*, int64_t, int64_t,
                         int64_t, int32_t*, int64_t);
void popcount_block_avx512(const uint64_t*, int64_t, int64_t, const uint64_t*, int64_t, int64_t,
                           int64_t, int32_t*, int64_t);
#endif

// ---- popcount panels (convolution and multi-row linear layout) ----------------------------------
// A holds m / V panels of V rows (m a multiple of V), rows interleaved word by word, so that one
// vector load holds word w of V rows and each lane of the accumulators is one (row, filter) pair:
// no horizontal sums, and the reduction runs in steps of 64 bits, not of a vector.  B is
// row-major and read by broadcasts.  A must be aligned to 8 * V bytes.
//   plain layout (split = false): word w of row r of panel q is A[q * kw * V + w * V + r]; B[j * ldb + w].
//   nibble-split layout (split = true, the AVX2 path): each word is stored as two, lo = word & 0x0f..0f
//   and hi = (word >> 4) & 0x0f..0f: A[q * 2 kw V + 2 w V + r] = lo, A[... + V] = hi; B[j * ldb + 2 w] = lo,
//   B[j * ldb + 2 w + 1] = hi.  popcount(a ^ b) = popcount(a_lo ^ b_lo) + popcount(a_hi ^ b_hi), and
//   both xors are already valid nibble indices for vpshufb: 6 vector ops per 256 bit-pairs, not 8.
// C[j * ldc + i] = kbits - 2 * sum_{w < kw} popcount(word w of row i of A ^ word w of row j of B).
using PanelFn = void (*)(const uint64_t* A, int64_t m, const uint64_t* B, int64_t ldb, int64_t n, int64_t kw,
                         int32_t kbits, int32_t* C, int64_t ldc);
// Tap kernel (direct convolution, AVX-512 and AVX2): np panels of V consecutive pixels (of one or
// more whole output rows) of a padded, packed input with one word per pixel, panel q at A + q * V * S
// and its word for tap w at A + q * V * S + off[w] (S = 2 on the split layout: V lo words, then the
// V hi words); C as for PanelFn.
using TapFn = void (*)(const uint64_t* A, int64_t np, const int64_t* off, const uint64_t* B, int64_t ldb, int64_t n,
                       int64_t kw, int32_t kbits, int32_t* C, int64_t ldc);
struct PanelKernel {
  PanelFn fn;
  int64_t V;   // rows per panel: 4 (portable, AVX2) or 8 (AVX-512)
  bool split;  // nibble-split layout
  TapFn taps = nullptr;  // the direct-convolution kernel where the path has one
};
PanelKernel panel_kernel(Path p);

// word -> (lo, hi) nibble planes, see above
constexpr uint64_t kNibbles = 0x0f0f0f0f0f0f0f0fULL;
inline uint64_t nib_lo(uint64_t w) { return w & kNibbles; }
inline uint64_t nib_hi(uint64_t w) { return (w >> 4) & kNibbles; }
// rows B[n, ldb] (kw words used) -> out[n, 2 kw] in the split layout
void split_rows(const uint64_t* B, int64_t N, int64_t ldb, int64_t kw, uint64_t* out, int nthreads);

#define ONEBIT_PANEL_ARGS const uint64_t*, int64_t, const uint64_t*, int64_t, int64_t, int64_t, int32_t, int32_t*, int64_t
void popcount_panel_portable(ONEBIT_PANEL_ARGS);
#if ONEBIT_X86
void popcount_panel_popcnt(ONEBIT_PANEL_ARGS);
void popcount_panel_avx2(ONEBIT_PANEL_ARGS);
void popcount_panel_avx512(ONEBIT_PANEL_ARGS);
void popcount_taps_avx512(const uint64_t*, int64_t, const int64_t*, const uint64_t*, int64_t, int64_t, int64_t, int32_t,
                          int32_t*, int64_t);
void popcount_taps_avx2(const uint64_t*, int64_t, const int64_t*, const uint64_t*, int64_t, int64_t, int64_t, int32_t,
                        int32_t*, int64_t);
#endif
#undef ONEBIT_PANEL_ARGS

// ---- threads ----------------------------------------------------------------------------------
// Runs fn(t) for t in [0, ntasks) on up to nthreads threads (the caller included), each thread
// taking its own contiguous share of the tasks first and then helping with the others': on the team
// of the OpenMP runtime already loaded in the process (torch's), or else on a persistent std::thread pool; nested or concurrent calls run serially in the calling
// thread.  If tasks throw, the first exception is rethrown in the caller after all tasks have finished.
void parallel_for(int64_t ntasks, int nthreads, const std::function<void(int64_t)>& fn);
// "openmp:<library path>" or "pool"
std::string thread_backend();
// "auto" (the loaded OpenMP runtime when there is one) or "pool" (always the std::thread pool)
void set_thread_backend(const std::string& name);

// ---- packing ----------------------------------------------------------------------------------
inline int64_t words_for(int64_t bits) { return (bits + 63) / 64; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// out[m * ldo + w]: bit k of row m is 1 iff a[m * lda + k] + shift[k] >= 0 (shift may be null);
// words [words_for(K), ldo) of each row are zeroed.
void pack_rows(const float* a, int64_t M, int64_t K, int64_t lda, const float* shift, uint64_t* out,
               int64_t ldo, bool avx2, int nthreads);

// Rows packed straight into panels of V interleaved rows (see PanelFn, split or plain layout);
// rows M..round_up(M, V)-1 are 0.
void pack_rows_panels(const float* a, int64_t M, int64_t K, int64_t lda, const float* shift, uint64_t* out,
                      int64_t V, bool split, bool avx2, int nthreads);
// Row-major packed rows A[M, lda] (kw words used) -> panels of V interleaved rows.
void interleave_panels(const uint64_t* A, int64_t M, int64_t lda, int64_t kw, int64_t V, bool split, uint64_t* out);

// The SIMD level the activation packers use under kernel path `path` on this CPU: Portable, AVX2 or
// AVX512 (the same bits whichever).
Path pack_isa(Path path);

// NCHW float (any element strides) -> out[((n * H + h) * W + w) * (G * Wg) + g * Wg + j], bits of
// group g's channels g*Cg + 64 j + b; bit 1 iff x + shift[c] >= 0.
void pack_nchw(const float* x, int64_t N, int64_t C, int64_t H, int64_t W, const int64_t strides[4],
               const float* shift, int64_t groups, uint64_t* out, Path isa, int nthreads);

// npix pixels of planar float data (pixel stride 1, channel stride sC) -> out[p * ldp + j], the
// bits of channels 64 j .. 64 j + 63 of pixel p for the Cn channels (bit 1 iff x + shift[c] >= 0;
// shift may be null); single-threaded, for a tile of a larger job.
void pack_pixels(const float* base, int64_t sC, int64_t npix, const float* shift, int64_t Cn, uint64_t* out,
                 int64_t ldp, Path isa);

// Weights w[F, Cg, KH, KW] (contiguous) -> bits[F, ldb] laid out tap-major, channel-minor:
// word (kh * KW + kw) * Wg + j holds channels 64 j .. 64 j + 63; words >= KH*KW*Wg are 0.
// tapsum[F, KH*KW] = sum over the Cg channels of sign(w) (+1 for w >= 0, else -1).
void pack_conv_weight(const float* w, int64_t F, int64_t Cg, int64_t KH, int64_t KW, uint64_t* bits,
                      int64_t ldb, int32_t* tapsum);

// ---- drivers ----------------------------------------------------------------------------------
struct ConvParams {
  int64_t N, C, H, W;           // input
  int64_t xstrides[4];          // element strides of x
  int64_t F, KH, KW, groups;    // filters
  int64_t sh, sw, ph, pw, dh, dw;  // stride, padding (top, left), dilation
  int64_t OH, OW;               // output size (bottom/right padding implied)
  int64_t ldb;                  // words per filter row in wbits
};

// y[n, f, oh, ow] (contiguous NCHW).  If out_f is given: acc * scale[f] + bias[f] (scale / bias may
// be null: 1 / 0); otherwise out_i receives the exact integer accumulator
// acc = sum over in-image taps and channels of sign(x + shift) * sign(w); padded taps contribute 0.
// wsplit: optional [F, 2 * KH*KW*Wg] nibble-split copy of wbits (split_rows), used by the paths
// whose panel kernel reads that layout (saves splitting the weights on every call).
// residual (float output only; may be null): a contiguous NCHW [N, F, OH, OW] tensor added in the
// epilogue, y = (acc * scale[f] + bias[f]) + residual, rounded exactly as the two separate float
// operations (mul, add, add; never fused).  It may alias out_f (each element is read before it is
// written), but not x.
// rprelu (float output only; may be null): [3, F] = gamma, slope, zeta of an RPReLU applied last,
// out = (t > 0 ? t : slope t) + zeta with t = y - gamma, y the value above (residual included).
// xbits (may be null): the input already sign-packed channels-last as pack_nchw leaves it,
// [N, H, W, groups * words_for(C / groups)]; x and shift are then not read (x may be null).
// out_bits (may be null): the signs of the float result for the next binary layer, channels-last
// [N, OH, OW, words_for(F)]: bit f of pixel (n, oh, ow) is 1 iff y + out_shift[f] >= 0 (out_shift may
// be null: y >= 0), y the float value above computed in the same float operations, so the bits are
// those pack_nchw(out, out_shift) would give; unused bits of the last word are 0.  out_f may then be
// null (only the bits are kept).  Not with out_i.
// bn (float output only; may be null): [2, F] = alpha, beta of an eval BatchNorm applied right after
// scale / bias, before the residual: y * alpha + beta rounded twice (bn_mode 1) or once, as a fused
// multiply-add (bn_mode 2): torch's CPU BatchNorm is one or the other depending on its build, and
// bn_terms computes alpha and beta as it does.
// pre_relu (float output only): torch's ReLU (y < 0 ? 0 : y) on acc * scale[f] + bias[f], before the
// BatchNorm: a conv -> ReLU -> BN branch (the ReSTE authors' ResNet-20s).
void conv2d(const ConvParams& p, const float* x, const float* shift, const uint64_t* wbits,
            const uint64_t* wsplit, const int32_t* tapsum, const float* scale, const float* bias, float* out_f,
            int32_t* out_i, Path path, int nthreads, const float* residual = nullptr,
            const float* rprelu = nullptr, const uint64_t* xbits = nullptr, uint64_t* out_bits = nullptr,
            const float* out_shift = nullptr, const float* bn = nullptr, int bn_mode = 0, bool pre_relu = false);

// alpha, beta [F] of an eval BatchNorm as torch's CPU kernel derives them from its parameters:
// alpha = weight * (1 / sqrt(var + eps)) and beta = bias - mean * alpha, in float, the latter as one
// fused multiply-add when fma (torch's FMA builds) or a product and a difference.
void bn_terms(const float* weight, const float* bias, const float* mean, const float* var, float eps, int64_t F,
              bool fma, float* alpha, float* beta);

// x[M, K] (row stride ldx) against wbits[N, ldb]: y[m, n] = acc * scale[n] + bias[n] into out_f, or
// the accumulator acc = K - 2 popcount into out_i.
void linear(const float* x, int64_t M, int64_t K, int64_t ldx, const float* shift, const uint64_t* wbits,
            const uint64_t* wsplit, int64_t N, int64_t ldb, const float* scale, const float* bias, float* out_f,
            int32_t* out_i, Path path, int nthreads, Kernel kernel = Kernel::Auto);

// A[M, lda] x B[N, ldb] words over K bits: out[m * N + n] = K - 2 popcount(A_m xor B_n).
void bgemm(const uint64_t* A, int64_t M, int64_t lda, const uint64_t* B, int64_t N, int64_t ldb, int64_t K,
           int32_t* out, Path path, int nthreads, Kernel kernel = Kernel::Auto);

// ---- exact float pooling (pool.cpp) ------------------------------------------------------------
// x: planes contiguous H x W float planes (NCHW with planes = N * C) -> out planes OH x OW.
// Max: bit for bit torch's max_pool2d (no dilation), -inf padding never wins, NaN propagates.
void maxpool2d(const float* x, int64_t planes, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
               int64_t ph, int64_t pw, int64_t OH, int64_t OW, float* out, Path path, int nthreads);
// Average without padding (floor mode): bit for bit torch's avg_pool2d (same float order).
void avgpool2d(const float* x, int64_t planes, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t sh, int64_t sw,
               int64_t OH, int64_t OW, float* out, Path path, int nthreads);

// ---- training-time surrogate gradients of sign (surrogate.cpp) ---------------------------------
// out[i] = g[i] * s(x[i]) in one pass; identical bits on every path.
enum class Surrogate { ReSTE = 0, ApproxSign = 1 };
struct SurrogateParams {
  float t = 0, m = 0, flat = 0, inv_o = 0, expo = 0;  // ReSTE's threshold, flat zone and power
};
// ReSTE's constants for o >= 1, threshold t and flat zone m (0 < m < t); flat = m^(1/o) / m.
SurrogateParams reste_params(double o, double t, double m);
void surrogate_grad(Surrogate kind, const float* x, const float* g, float* out, int64_t n,
                    const SurrogateParams& q, Path path, int nthreads);

}  // namespace onebit
