// Kernel-level timing of the engine's 3x3 binary convolutions (ResNet-18 and CIFAR ResNet-20 shapes), batch 1, one thread, no Python:
// the whole conv2d (integer and float outputs) and the popcount panel kernel alone over all rows
// of the layer (the GEMM part), median and minimum of many calls.  Built and run by
// benchmarks/kernel_bench.sh; used to compare kernel variants (the minimum is the steadiest
// figure on a shared VM).  Arguments: [calls] [path] (auto, avx512, avx2 or portable).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "engine.h"

using namespace onebit;

template <class F>
std::pair<double, double> timed(F f, int n) {  // (median, min) in ms
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return {t[n / 2], t[0]};
}

int main(int argc, char** argv) {
  const int calls = argc > 1 ? std::atoi(argv[1]) : 300;
  const Path path = parse_path(argc > 2 ? argv[2] : "auto");
  const PanelKernel pk = panel_kernel(path);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd;
  std::printf("path %s, %d calls per figure; ms as median / min\n", path_name(path), calls);
  // the ImageNet ResNet-18 stages, then the CIFAR ResNet-20 ones (where per-call costs weigh more)
  const int64_t shapes[][2] = {{64, 56}, {128, 28}, {256, 14}, {512, 7}, {16, 32}, {32, 16}, {64, 8}};
  for (const auto& s : shapes) {
    const int64_t C = s[0], H = s[1], Wg = words_for(C), kw = 9 * Wg, ldb = round_up(kw, 8);
    const int64_t S = pk.split ? 2 : 1;
    std::vector<float> x(C * H * H), w(C * C * 9), scale(C, 0.5f), bias(C, 0.25f);
    for (auto& v : x) v = nd(rng);
    for (auto& v : w) v = nd(rng);
    std::vector<uint64_t> wbits(C * ldb), wsplit(C * 2 * kw);
    std::vector<int32_t> tapsum(C * 9), acc(C * H * H);
    std::vector<float> out(C * H * H);
    pack_conv_weight(w.data(), C, C, 3, 3, wbits.data(), ldb, tapsum.data());
    split_rows(wbits.data(), C, ldb, kw, wsplit.data(), 1);
    const uint64_t* ws = pk.split ? wsplit.data() : nullptr;
    const uint64_t* B = pk.split ? wsplit.data() : wbits.data();
    const int64_t ldB = pk.split ? 2 * kw : ldb;
    ConvParams p{1, C, H, H, {C * H * H, H * H, H, 1}, C, 3, 3, 1, 1, 1, 1, 1, 1, 1, H, H, ldb};
    const auto ti = timed([&] { conv2d(p, x.data(), nullptr, wbits.data(), ws, tapsum.data(), nullptr, nullptr,
                                       nullptr, acc.data(), path, 1); }, calls);
    const auto tf = timed([&] { conv2d(p, x.data(), nullptr, wbits.data(), ws, tapsum.data(), scale.data(),
                                       bias.data(), out.data(), nullptr, path, 1); }, calls);
    // the kernel alone: random panels of all rows, in blocks of 112 rows as conv2d's tiles
    const int64_t M = round_up(H * H, pk.V), mb = std::min<int64_t>(M, 112);
    uint64_t* A = static_cast<uint64_t*>(std::aligned_alloc(64, static_cast<size_t>(M * S * kw * 8 + 64)));
    for (int64_t i = 0; i < M * S * kw; ++i) A[i] = pk.split ? (rng() & kNibbles) : rng();
    std::vector<int32_t> T(mb * C);
    const auto tk = timed([&] {
      for (int64_t m0 = 0; m0 < M; m0 += mb)
        pk.fn(A + m0 * S * kw, std::min(mb, M - m0), B, ldB, C, kw, static_cast<int32_t>(9 * C), T.data(),
              std::min(mb, M - m0));
    }, calls);
    std::free(A);
    const double macs = 9.0 * C * C * H * H;
    std::printf("%4ld -> %4ld @ %2ldx%-2ld  conv int %.3f / %.3f  conv float %.3f / %.3f  kernel %.3f / %.3f"
                "  (kernel %.0f G binary MAC/s at its min)\n",
                static_cast<long>(C), static_cast<long>(C), static_cast<long>(H), static_cast<long>(H), ti.first,
                ti.second, tf.first, tf.second, tk.first, tk.second, macs / tk.second / 1e6);
  }
  return 0;
}
