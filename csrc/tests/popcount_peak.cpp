// The machine's ceiling for the AVX-512 popcount kernels, one thread: the clock (a chain of
// dependent scalar adds, one per cycle), the throughput of vpopcntq alone and of xor / add alone,
// and of the kernel's xor + vpopcntq + add step from registers, from aligned L1 loads and from
// loads that split a cache line.  Built and run by benchmarks/kernel_bench.sh; prints nothing
// useful without AVX-512 VPOPCNTDQ.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>

#define ONEBIT_PEAK __attribute__((target("avx512f,avx512vpopcntdq"), noinline))

namespace {

template <class F>
double best_seconds(F f) {
  double m = 1e9;
  for (int r = 0; r < 30; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    m = std::min(m, std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  return m;
}

// Register operands, not immediates: some Intel cores fold chains of add-immediate at rename (the
// Xeon VM of session 19: the immediate chain ran at 3.5 "adds per cycle" and the clock read 14 GHz).
__attribute__((noinline)) uint64_t add_chain(int64_t n, uint64_t x, uint64_t one) {
  for (int64_t i = 0; i < n; ++i)
    __asm__ volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0" : "+r"(x) : "r"(one));
  return x;
}

ONEBIT_PEAK void popcnt_only(int64_t n, __m512i* o) {
  __m512i a[8];
  for (int q = 0; q < 8; ++q) a[q] = _mm512_set1_epi64(q + 1);
  for (int64_t i = 0; i < n; ++i)
    for (int q = 0; q < 8; ++q) a[q] = _mm512_popcnt_epi64(a[q]);
  for (int q = 0; q < 8; ++q) o[q] = a[q];
}

ONEBIT_PEAK void xor_add(int64_t n, __m512i* o) {
  __m512i a[8], b = _mm512_set1_epi64(5);
  for (int q = 0; q < 8; ++q) a[q] = _mm512_set1_epi64(q + 1);
  for (int64_t i = 0; i < n; ++i) {
    for (int q = 0; q < 8; ++q) a[q] = _mm512_add_epi64(_mm512_xor_si512(a[q], b), b);
    __asm__ volatile("" : "+v"(b));
  }
  for (int q = 0; q < 8; ++q) o[q] = a[q];
}

// the kernel's step, 7 accumulators as the 7-panel tap kernel
ONEBIT_PEAK void step_registers(int64_t n, __m512i* o) {
  __m512i a[7], acc[7], b = _mm512_set1_epi64(12345);
  for (int q = 0; q < 7; ++q) a[q] = _mm512_set1_epi64(3 * q + 1), acc[q] = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; ++i) {
    for (int q = 0; q < 7; ++q) acc[q] = _mm512_add_epi64(acc[q], _mm512_popcnt_epi64(_mm512_xor_si512(a[q], b)));
    __asm__ volatile("" : "+v"(b));
  }
  for (int q = 0; q < 7; ++q) o[q] = acc[q];
}

ONEBIT_PEAK void step_loads(const uint64_t* A, int64_t n, int64_t shift, __m512i* o) {
  __m512i acc[7], b = _mm512_set1_epi64(12345);
  for (int q = 0; q < 7; ++q) acc[q] = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t* p = A + (i % 9) * 64 + shift;
    for (int q = 0; q < 7; ++q)
      acc[q] = _mm512_add_epi64(acc[q], _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(p + 8 * q), b)));
    __asm__ volatile("" : "+v"(b));
  }
  for (int q = 0; q < 7; ++q) o[q] = acc[q];
}

// Keeps the timed work alive.  (The exit status was this value's parity: 1 half the time, which
// stopped kernel_bench.sh under set -e before it renamed its output.)
volatile uint64_t keep;

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512vpopcntdq")) {
    std::printf("popcount peak: no AVX-512 VPOPCNTDQ on this CPU, skipped\n");
    return 0;
  }
  const int64_t n = 200000;
  alignas(64) static uint64_t A[64 * 10 + 64];
  for (int i = 0; i < 64 * 10 + 64; ++i) A[i] = i * 0x9E3779B97F4A7C15ULL;
  alignas(64) __m512i o[8];
  uint64_t sink = 0;
  const double ghz = 4.0 * n / best_seconds([&] { sink += add_chain(n, sink, 1); }) / 1e9;
  const double cyc = 1.0 / ghz;  // ns per cycle
  const double t_pop = best_seconds([&] { popcnt_only(n, o); }) / (8.0 * n) * 1e9;
  const double t_xa = best_seconds([&] { xor_add(n, o); }) / (16.0 * n) * 1e9;
  std::printf("popcount peak: clock %.2f GHz; vpopcntq alone %.2f per cycle; xor / add alone %.2f per cycle\n", ghz,
              cyc / t_pop, cyc / t_xa);
  const double t_reg = best_seconds([&] { step_registers(n, o); }) / (7.0 * n) * 1e9;
  std::printf("  xor + vpopcntq + add per 512 bit-pairs: %.2f cycles from registers (%.0f G binary MAC/s)\n",
              t_reg / cyc, 512.0 / t_reg);
  for (int64_t shift : {0, 1}) {
    const double t = best_seconds([&] { step_loads(A, n, shift, o); }) / (7.0 * n) * 1e9;
    std::printf("  %s: %.2f cycles (%.0f G binary MAC/s)\n",
                shift ? "from L1, loads split across cache lines" : "from L1, aligned loads", t / cyc, 512.0 / t);
  }
  keep = sink + reinterpret_cast<volatile unsigned char*>(o)[0];
  return 0;
}
