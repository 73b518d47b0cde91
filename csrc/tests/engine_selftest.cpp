// Standalone self-test of the engine (no Python): every kernel path this CPU has, against scalar
// references, on random shapes and edge cases; and the thread pool.  Built and run under
// -fsanitize=address,undefined by tests/test_sanitizers.py; exits 0 iff every check passed.
#include <cmath>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__unix__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "engine.h"

using namespace onebit;

namespace {

int failures = 0;

void check(bool ok, const char* what, const char* path) {
  if (!ok && failures++ < 20) std::fprintf(stderr, "FAIL: %s (path %s)\n", what, path);
}

int sgn(float v) { return v >= 0.0f ? 1 : -1; }

// random floats with exact zeros and negative zeros mixed in
std::vector<float> randoms(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) {
    const unsigned r = rng() % 16;
    x = r == 0 ? 0.0f : r == 1 ? -0.0f : nd(rng);
  }
  return v;
}

void test_bgemm(std::mt19937& rng, Path path) {
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 63}, {8, 7, 64}, {13, 9, 130}, {33, 17, 1000}, {70, 6, 2049}};
  for (const auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2], kw = words_for(K);
    const std::vector<float> a = randoms(rng, M * K), b = randoms(rng, N * K);
    std::vector<uint64_t> A(M * kw), B(N * kw);
    pack_rows(a.data(), M, K, K, nullptr, A.data(), kw, path != Path::Portable, 1);
    pack_rows(b.data(), N, K, K, nullptr, B.data(), kw, path != Path::Portable, 1);
    for (Kernel kern : {Kernel::Rows, Kernel::Panels}) {
      for (int nt : {1, 2}) {
        std::vector<int32_t> out(M * N);
        bgemm(A.data(), M, kw, B.data(), N, kw, K, out.data(), path, nt, kern);
        bool ok = true;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            int32_t ref = 0;
            for (int64_t k = 0; k < K; ++k) ref += sgn(a[m * K + k]) * sgn(b[n * K + k]);
            ok &= out[m * N + n] == ref;
          }
        check(ok, "bgemm", path_name(path));
      }
    }
  }
}

// n, c, h, w, f, k, stride, pad, dilation, groups
void test_conv(std::mt19937& rng, Path path) {
  bool relu_clipped = false;  // the ReLU check met negative values somewhere (it is not vacuous)
  const int64_t cases[][10] = {{1, 3, 5, 6, 4, 3, 1, 1, 1, 1},   {2, 63, 7, 7, 5, 3, 2, 1, 1, 1},
                               {1, 65, 9, 8, 6, 3, 1, 2, 1, 1},  {1, 130, 6, 5, 8, 3, 2, 1, 1, 2},
                               {1, 4, 10, 9, 4, 5, 1, 2, 2, 2},  {1, 8, 7, 7, 6, 1, 2, 0, 1, 1},
                               {1, 6, 3, 3, 3, 3, 1, 2, 1, 3},   {1, 64, 30, 29, 7, 3, 1, 1, 1, 1},
                               {1, 64, 57, 57, 5, 3, 1, 1, 1, 1},  // tile-by-tile im2col, 4-word splits
                               {1, 1, 1, 1, 1, 1, 1, 0, 1, 1},
                               // AVX-512 direct convolution (one word per pixel, stride 1, OW % 8 == 0)
                               {2, 16, 8, 8, 16, 3, 1, 1, 1, 1},  {1, 33, 12, 16, 9, 3, 1, 2, 2, 1},
                               {1, 7, 4, 6, 3, 3, 1, 2, 1, 1},    {1, 64, 56, 56, 8, 3, 1, 1, 1, 1},
                               // AVX2 direct convolution (OW % 4 == 0): dilation, 7x7 taps (kw > 31)
                               {2, 40, 9, 12, 7, 3, 1, 2, 2, 1},  {2, 5, 9, 12, 4, 7, 1, 3, 1, 1}};
  for (const auto& cs : cases) {
    ConvParams p{};
    p.N = cs[0], p.C = cs[1], p.H = cs[2], p.W = cs[3], p.F = cs[4], p.KH = p.KW = cs[5];
    p.sh = p.sw = cs[6], p.ph = p.pw = cs[7], p.dh = p.dw = cs[8], p.groups = cs[9];
    p.OH = (p.H + 2 * p.ph - p.dh * (p.KH - 1) - 1) / p.sh + 1;
    p.OW = (p.W + 2 * p.pw - p.dw * (p.KW - 1) - 1) / p.sw + 1;
    const int64_t Cg = p.C / p.groups, Fg = p.F / p.groups, taps = p.KH * p.KW;
    p.xstrides[0] = p.C * p.H * p.W, p.xstrides[1] = p.H * p.W, p.xstrides[2] = p.W, p.xstrides[3] = 1;
    p.ldb = round_up(taps * words_for(Cg), 8);
    const std::vector<float> x = randoms(rng, p.N * p.C * p.H * p.W), w = randoms(rng, p.F * Cg * taps);
    const std::vector<float> shift = randoms(rng, p.C);
    std::vector<uint64_t> wbits(p.F * p.ldb);
    std::vector<int32_t> tapsum(p.F * taps);
    pack_conv_weight(w.data(), p.F, Cg, p.KH, p.KW, wbits.data(), p.ldb, tapsum.data());
    std::vector<int32_t> ref(p.N * p.F * p.OH * p.OW, 0);
    for (int64_t n = 0; n < p.N; ++n)
      for (int64_t f = 0; f < p.F; ++f)
        for (int64_t oh = 0; oh < p.OH; ++oh)
          for (int64_t ow = 0; ow < p.OW; ++ow) {
            int32_t acc = 0;
            const int64_t g = f / Fg;
            for (int64_t c = 0; c < Cg; ++c)
              for (int64_t kh = 0; kh < p.KH; ++kh)
                for (int64_t kx = 0; kx < p.KW; ++kx) {
                  const int64_t ih = oh * p.sh - p.ph + kh * p.dh, iw = ow * p.sw - p.pw + kx * p.dw;
                  if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) continue;
                  const int64_t ch = g * Cg + c;
                  acc += sgn(x[((n * p.C + ch) * p.H + ih) * p.W + iw] + shift[ch]) *
                         sgn(w[((f * Cg + c) * p.KH + kh) * p.KW + kx]);
                }
            ref[((n * p.F + f) * p.OH + oh) * p.OW + ow] = acc;
          }
    for (int nt : {1, 2}) {
      std::vector<int32_t> out(ref.size(), -12345);
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), nullptr, nullptr, nullptr, out.data(),
             path, nt);
      check(out == ref, "conv2d accumulators", path_name(path));
      std::vector<float> y(ref.size());
      std::vector<float> scale(p.F, 0.5f), bias(p.F, 0.25f);
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), y.data(),
             nullptr, path, nt);
      bool ok = true;
      for (size_t i = 0; i < y.size(); ++i) ok &= y[i] == static_cast<float>(ref[i]) * 0.5f + 0.25f;
      check(ok, "conv2d float epilogue", path_name(path));
      // fused residual add: (acc * s + b) + r, separately into a new buffer and in place into r
      std::vector<float> r = randoms(rng, y.size()), yr(y.size()), rin = r;
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), yr.data(),
             nullptr, path, nt, r.data());
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), rin.data(),
             nullptr, path, nt, rin.data());
      ok = true;
      for (size_t i = 0; i < y.size(); ++i) {
        const float want = y[i] + r[i];
        ok &= yr[i] == want && rin[i] == want;
      }
      check(ok, "conv2d fused residual", path_name(path));
      // fused residual add then RPReLU (gamma, slope, zeta per filter), with and without the residual
      std::vector<float> act = randoms(rng, 3 * p.F), ya(y.size()), yn(y.size());
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), ya.data(),
             nullptr, path, nt, r.data(), act.data());
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), yn.data(),
             nullptr, path, nt, nullptr, act.data());
      ok = true;
      for (size_t i = 0; i < y.size(); ++i) {
        const int64_t f = (static_cast<int64_t>(i) / (p.OH * p.OW)) % p.F;
        const float g = act[f], sl = act[p.F + f], z = act[2 * p.F + f];
        const float t = (y[i] + r[i]) - g, u = y[i] - g;
        ok &= ya[i] == (t > 0.0f ? t : sl * t) + z && yn[i] == (u > 0.0f ? u : sl * u) + z;
      }
      check(ok, "conv2d fused rprelu", path_name(path));
      // BatchNorm stage (alpha, beta per filter) before the residual: two roundings, or one fused
      std::vector<float> bnp = randoms(rng, 2 * p.F), y1(y.size()), y2(y.size());
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), y1.data(),
             nullptr, path, nt, r.data(), nullptr, nullptr, nullptr, nullptr, bnp.data(), 1);
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), y2.data(),
             nullptr, path, nt, r.data(), nullptr, nullptr, nullptr, nullptr, bnp.data(), 2);
      ok = true;
      for (size_t i = 0; i < y.size(); ++i) {
        const int64_t f = (static_cast<int64_t>(i) / (p.OH * p.OW)) % p.F;
        const float prod = y[i] * bnp[f];
        ok &= y1[i] == (prod + bnp[p.F + f]) + r[i] && y2[i] == std::fma(y[i], bnp[f], bnp[p.F + f]) + r[i];
      }
      check(ok, "conv2d batchnorm epilogue", path_name(path));
      // ReLU before the BatchNorm (a conv -> ReLU -> BN branch): y < 0 ? 0 : y, then the stages above
      std::vector<float> y3(y.size());
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), y3.data(),
             nullptr, path, nt, r.data(), nullptr, nullptr, nullptr, nullptr, bnp.data(), 1, true);
      ok = true;
      for (size_t i = 0; i < y.size(); ++i) {
        const int64_t f = (static_cast<int64_t>(i) / (p.OH * p.OW)) % p.F;
        const float v = y[i] < 0.0f ? 0.0f : y[i];
        const float prod = v * bnp[f];
        relu_clipped |= y[i] < 0.0f;
        ok &= y3[i] == (prod + bnp[p.F + f]) + r[i];
      }
      check(ok, "conv2d relu before batchnorm", path_name(path));
      // packed-bits output: the signs of ya + a threshold, channels-last, with and without the float;
      // then those bits as the input of a layer with F input channels (accumulators against the floats)
      const int64_t wf = words_for(p.F), npix = p.N * p.OH * p.OW;
      std::vector<float> osh = randoms(rng, p.F), yb(y.size());
      std::vector<uint64_t> bits(npix * wf, ~uint64_t{0}), bits2(npix * wf, ~uint64_t{0});
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), yb.data(),
             nullptr, path, nt, r.data(), act.data(), nullptr, bits.data(), osh.data());
      conv2d(p, x.data(), shift.data(), wbits.data(), nullptr, tapsum.data(), scale.data(), bias.data(), nullptr,
             nullptr, path, nt, r.data(), act.data(), nullptr, bits2.data(), osh.data());
      ok = yb == ya && bits == bits2;
      for (int64_t q = 0; q < npix; ++q) {
        const int64_t n = q / (p.OH * p.OW), pix = q % (p.OH * p.OW);
        for (int64_t wd = 0; wd < wf; ++wd) {
          uint64_t want = 0;
          for (int64_t b = 0; b < 64 && 64 * wd + b < p.F; ++b) {
            const int64_t f = 64 * wd + b;
            want |= static_cast<uint64_t>(ya[(n * p.F + f) * p.OH * p.OW + pix] + osh[f] >= 0.0f) << b;
          }
          ok &= bits[q * wf + wd] == want;
        }
      }
      check(ok, "conv2d packed-bits output", path_name(path));
      ConvParams q = p;  // next layer: F -> F channels, 3x3, stride 1, pad 1, on the OH x OW output
      q.C = p.F, q.H = p.OH, q.W = p.OW, q.F = 3, q.KH = q.KW = 3, q.sh = q.sw = q.dh = q.dw = 1, q.ph = q.pw = 1;
      q.groups = 1, q.OH = p.OH, q.OW = p.OW, q.ldb = round_up(9 * wf, 8);
      q.xstrides[0] = p.F * p.OH * p.OW, q.xstrides[1] = p.OH * p.OW, q.xstrides[2] = p.OW, q.xstrides[3] = 1;
      const std::vector<float> w2 = randoms(rng, q.F * q.C * 9);
      std::vector<uint64_t> wb2(q.F * q.ldb);
      std::vector<int32_t> ts2(q.F * 9), a1(q.F * npix), a2(q.F * npix);
      pack_conv_weight(w2.data(), q.F, q.C, 3, 3, wb2.data(), q.ldb, ts2.data());
      conv2d(q, ya.data(), osh.data(), wb2.data(), nullptr, ts2.data(), nullptr, nullptr, nullptr, a1.data(), path,
             nt);
      conv2d(q, nullptr, nullptr, wb2.data(), nullptr, ts2.data(), nullptr, nullptr, nullptr, a2.data(), path, nt,
             nullptr, nullptr, bits.data());
      check(a1 == a2, "conv2d packed-bits input", path_name(path));
    }
  }
  check(relu_clipped, "conv2d relu before batchnorm met negative values", path_name(path));
}

// pools against direct references (torch's semantics: first max in row-major order, NaN wins;
// average = ((0 + x00) + x01 + ...) / (KH KW))
void test_pools(std::mt19937& rng, Path path) {
  const int64_t cases[][7] = {{5, 112, 112, 3, 2, 1, 0}, {3, 9, 11, 3, 2, 1, 0}, {2, 7, 8, 2, 2, 0, 1},
                              {2, 10, 10, 3, 1, 1, 0}, {3, 9, 13, 3, 3, 0, 1}, {2, 56, 56, 2, 2, 0, 1},
                              {1, 5, 5, 1, 1, 0, 1}, {2, 17, 33, 2, 2, 0, 1}};
  for (const auto& c : cases) {
    const int64_t P = c[0], H = c[1], W = c[2], K = c[3], S = c[4], Pd = c[5];
    const int64_t OH = (H + 2 * Pd - K) / S + 1, OW = (W + 2 * Pd - K) / S + 1;
    std::vector<float> x = randoms(rng, P * H * W);
    x[3] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> mx(P * OH * OW), ref_m(P * OH * OW);
    for (int64_t pl = 0; pl < P; ++pl)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          float m = -std::numeric_limits<float>::infinity();
          for (int64_t kh = 0; kh < K; ++kh)
            for (int64_t kx = 0; kx < K; ++kx) {
              const int64_t ih = oh * S - Pd + kh, iw = ow * S - Pd + kx;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              const float v = x[(pl * H + ih) * W + iw];
              if (v > m || v != v) m = v;
            }
          ref_m[(pl * OH + oh) * OW + ow] = m;
        }
    for (int nt : {1, 2}) {
      maxpool2d(x.data(), P, H, W, K, K, S, S, Pd, Pd, OH, OW, mx.data(), path, nt);
      bool ok = true;
      for (size_t i = 0; i < mx.size(); ++i) ok &= (mx[i] == ref_m[i]) || (mx[i] != mx[i] && ref_m[i] != ref_m[i]);
      check(ok, "maxpool2d", path_name(path));
    }
    if (c[6]) {
      std::vector<float> av(P * OH * OW), ref_a(P * OH * OW);
      x[3] = 1.0f;
      for (int64_t pl = 0; pl < P; ++pl)
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow) {
            float s = 0.0f;
            for (int64_t kh = 0; kh < K; ++kh)
              for (int64_t kx = 0; kx < K; ++kx) s += x[(pl * H + oh * S + kh) * W + ow * S + kx];
            ref_a[(pl * OH + oh) * OW + ow] = 0.0f + s / static_cast<float>(K * K);
          }
      for (int nt : {1, 2}) {
        avgpool2d(x.data(), P, H, W, K, K, S, S, OH, OW, av.data(), path, nt);
        check(std::memcmp(av.data(), ref_a.data(), av.size() * sizeof(float)) == 0, "avgpool2d", path_name(path));
      }
    }
  }
}

// surrogate gradients: within 1e-6 of a double-precision reference; NaN in, NaN out
void test_surrogate(std::mt19937& rng, Path path) {
  const float specials[] = {0.0f, -0.0f, 0.1f, -0.1f, 1.5f, -1.5f, 1e-42f, 3e38f,
                            std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  for (int64_t n : {1, 17, 40000}) {
    std::vector<float> x = randoms(rng, n), g = randoms(rng, n), out(n);
    for (int64_t i = 0; i < n && i < 10; ++i) x[i] = specials[i];
    for (double o : {1.0, 2.7}) {
      const SurrogateParams q = reste_params(o, 1.5, 0.1);
      surrogate_grad(Surrogate::ReSTE, x.data(), g.data(), out.data(), n, q, path, 2);
      bool ok = true;
      for (int64_t i = 0; i < n; ++i) {
        const double a = std::fabs(static_cast<double>(x[i]));
        if (a != a) { ok &= out[i] != out[i]; continue; }
        const double s = a > q.t ? 0.0 : a <= q.m ? q.flat : (1.0 / o) * std::pow(a, (1.0 - o) / o);
        const double ref = s * g[i];
        ok &= std::fabs(out[i] - ref) <= 1e-6 * std::fabs(ref);
      }
      check(ok, "surrogate_grad reste", path_name(path));
    }
    surrogate_grad(Surrogate::ApproxSign, x.data(), g.data(), out.data(), n, SurrogateParams{}, path, 2);
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) {
      const float s = 1.0f - std::fabs(x[i]);
      const float ref = g[i] * ((s > 0.0f ? s : (s != s ? s : 0.0f)) * 2.0f);
      ok &= out[i] == ref || (out[i] != out[i] && ref != ref);
    }
    check(ok, "surrogate_grad approx_sign", path_name(path));
  }
}

void test_thread_pool() {
  for (int nt : {1, 2, 3, 4}) {  // task counts below, at and off multiples of the threads (parts)
    for (int64_t ntasks : {0, 1, 2, 3, 5, 7, 100}) {
      std::vector<std::atomic<int>> hits(ntasks);
      parallel_for(ntasks, nt, [&](int64_t t) { hits[t]++; });
      bool ok = true;
      for (auto& h : hits) ok &= h.load() == 1;
      check(ok, "parallel_for runs every task once", "-");
    }
  }
  bool caught = false;  // an exception in a task reaches the caller, after every task finished
  std::atomic<int> ran{0};
  try {
    parallel_for(50, 2, [&](int64_t t) {
      ran++;
      if (t == 7) throw std::runtime_error("task 7");
    });
  } catch (const std::runtime_error&) {
    caught = true;
  }
  check(caught && ran.load() == 50, "parallel_for rethrows", "-");
  std::atomic<int64_t> sum{0};  // concurrent callers (run serially) and nested calls
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&] {
      for (int r = 0; r < 20; ++r)
        parallel_for(8, 2, [&](int64_t t) { parallel_for(4, 2, [&](int64_t u) { sum += t * 4 + u; }); });
    });
  for (auto& th : callers) th.join();
  check(sum.load() == 3 * 20 * (31 * 32 / 2), "concurrent and nested parallel_for", "-");
}

// pack_nchw on inputs whose last channel row ends right before an unreadable page: the vector
// packers' tail loads (masked) must not touch memory past the last pixel (an over-read that only
// sets discarded bits is invisible to the comparisons elsewhere).
void test_pack_tail_reads(std::mt19937& rng, Path path) {
#if defined(__unix__)
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (int64_t C : {1, 33, 64, 100}) {
    for (int64_t npix = 1; npix <= 140; ++npix) {
      const size_t bytes = static_cast<size_t>(C * npix) * sizeof(float), span = (bytes + page - 1) / page * page;
      void* mem = mmap(nullptr, span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED || mprotect(static_cast<char*>(mem) + span, page, PROT_NONE) != 0) {
        check(false, "mmap / mprotect for the guard page", path_name(path));
        return;
      }
      float* x = reinterpret_cast<float*>(static_cast<char*>(mem) + span - bytes);
      const std::vector<float> v = randoms(rng, static_cast<size_t>(C * npix));
      std::memcpy(x, v.data(), bytes);
      const int64_t s[4] = {C * npix, npix, npix, 1};
      std::vector<uint64_t> got(npix * words_for(C)), want(npix * words_for(C));
      pack_nchw(x, 1, C, 1, npix, s, nullptr, 1, want.data(), Path::Portable, 1);
      pack_nchw(x, 1, C, 1, npix, s, nullptr, 1, got.data(), pack_isa(path), 1);
      check(got == want, "pack_nchw of an input that ends at a guard page", path_name(path));
      munmap(mem, span + page);
    }
  }
#else
  (void)rng, (void)path;
#endif
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  std::printf("threads %s\n", thread_backend().c_str());
  test_thread_pool();
  for (Path path : {Path::Portable, Path::AVX2, Path::AVX512}) {
    if (!path_available(path)) continue;
    std::printf("path %s\n", path_name(path));
    test_bgemm(rng, path);
    test_conv(rng, path);
    test_pack_tail_reads(rng, path);
    test_pools(rng, path);
    test_surrogate(rng, path);
  }
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
