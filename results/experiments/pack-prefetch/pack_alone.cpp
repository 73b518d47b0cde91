// pack_nchw alone on one C x H x H float input, one thread, checked against the portable packer;
// an output-sized write between calls (as the conv's float output evicts the input).
//   pack_alone CALLS C H PATH  ->  "median MS min MS"
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "engine.h"

using namespace onebit;

int main(int argc, char** argv) {
  if (argc < 5) return 2;
  const int calls = std::atoi(argv[1]);
  const int64_t C = std::atoi(argv[2]), H = std::atoi(argv[3]);
  const Path path = parse_path(argv[4]);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(C * H * H), junk(C * H * H);
  for (auto& v : x) v = nd(rng);
  std::vector<uint64_t> out(H * H * words_for(C)), ref(H * H * words_for(C));
  const int64_t s[4] = {C * H * H, H * H, H, 1};
  pack_nchw(x.data(), 1, C, H, H, s, nullptr, 1, ref.data(), Path::Portable, 1);
  pack_nchw(x.data(), 1, C, H, H, s, nullptr, 1, out.data(), pack_isa(path), 1);
  if (out != ref) {
    std::printf("MISMATCH\n");
    return 1;
  }
  std::vector<double> t;
  for (int i = 0; i < calls; ++i) {
    for (size_t j = 0; j < junk.size(); j += 16) junk[j] += 1.0f;
    const auto a = std::chrono::steady_clock::now();
    pack_nchw(x.data(), 1, C, H, H, s, nullptr, 1, out.data(), pack_isa(path), 1);
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  std::printf("median %.4f min %.4f ms\n", t[calls / 2], t[0]);
  return 0;
}
