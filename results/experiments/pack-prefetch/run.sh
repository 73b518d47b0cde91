#!/usr/bin/env bash
# The activation packer before and after dropping its software prefetch (and going to 64 pixels per
# AVX-512 step): csrc/tests/kernel_bench.cpp built against OLD's csrc/ and against the working tree,
# run alternately ROUNDS times, and pack_alone.cpp (the activation packer alone) the same way (this VM's speed drifts by +-30% over seconds: compare medians of
# rounds, not one run), then a perf profile of the 64 -> 64 @ 56x56 layer for each when perf exists.
#   bash results/experiments/pack-prefetch/run.sh [OLD (default f5d8a7d)] [ROUNDS (default 7)] [PATH (default auto)]
# Pause trainings first; writes nothing (redirect the output).  The outputs beside this script and
# the arguments and script version of each: README.md here.
set -euo pipefail
here=$(cd "$(dirname "$0")/../../.." && pwd)
old=${1:-f5d8a7d}
rounds=${2:-7}
path=${3:-auto}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/old"
git -C "$here" archive "$old" csrc | tar -x -C "$tmp/old"
build() {  # build SRC_DIR OUT
  g++ -std=c++17 -O3 -g -ffp-contract=off -pthread -I"$1" "$here/csrc/tests/kernel_bench.cpp" \
    $(ls "$1"/*.cpp | grep -v bindings.cpp) -ldl -o "$2"
}
build "$tmp/old/csrc" "$tmp/bench_old" &
build "$here/csrc" "$tmp/bench_new" &
wait
build_pack() {  # build_pack SRC_DIR OUT
  g++ -std=c++17 -O3 -ffp-contract=off -pthread -I"$1" "$here/results/experiments/pack-prefetch/pack_alone.cpp" \
    $(ls "$1"/*.cpp | grep -v bindings.cpp) -ldl -o "$2"
}
build_pack "$tmp/old/csrc" "$tmp/pack_old" &
build_pack "$here/csrc" "$tmp/pack_new" &
wait
# lines "old|new SHAPE MS" -> per shape: the medians over rounds, their ratio (and the rounds)
cat > "$tmp/summary.py" <<'PY'
import collections, statistics, sys
title, nd, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["rounds"]
d = collections.defaultdict(list)
for line in sys.stdin:
    v, shape, ms = line.split()
    d[(shape, v)].append(float(ms))
print(title)
for shape in dict.fromkeys(s for s, _ in d):
    o, n = statistics.median(d[(shape, "old")]), statistics.median(d[(shape, "new")])
    row = f"{shape:>8}  old {o:.{nd}f}  new {n:.{nd}f}  old/new {o / n:.2f}"
    if rounds:
        row += "   old: " + " ".join(f"{x:.3f}" for x in d[(shape, "old")])
        row += "   new: " + " ".join(f"{x:.3f}" for x in d[(shape, "new")])
    print(row)
PY
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), path $path, old = $old, new = $(git -C "$here" rev-parse --short HEAD)+tree"
for r in $(seq "$rounds"); do
  for v in old new; do "$tmp/bench_$v" 200 "$path" | sed -n 's/^ *\([0-9]*\) -> *\([0-9]*\) @ *\([0-9x ]*\) .*conv float \([0-9.]*\) .*/'"$v"' \1@\3 \4/p'; done
done | python3 "$tmp/summary.py" "conv float, median over rounds of each run's median (ms); rounds listed" 3 rounds
for r in $(seq "$rounds"); do
  for shape in "64 56" "128 28" "256 14" "512 7" "16 32"; do
    for v in old new; do
      line=$("$tmp/pack_$v" 300 $shape "$path") || { echo "pack_alone ($v, $shape): $line" >&2; exit 1; }
      echo "$v ${shape// /@} $(echo "$line" | awk '{print $2}')"
    done
  done
done | python3 "$tmp/summary.py" "pack_nchw alone, median over rounds of each run's median (ms)" 4
if command -v perf > /dev/null; then
  cat > "$tmp/one.cpp" <<'CPP'
#include <random>
#include <vector>
#include "engine.h"
using namespace onebit;
int main() {  // 3000 calls of the 64 -> 64 @ 56x56 float conv
  const int64_t C = 64, H = 56, kw = 9, ldb = 16;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(C * H * H), w(C * C * 9), scale(C, 0.5f), bias(C, 0.25f), out(C * H * H);
  for (auto& v : x) v = nd(rng);
  for (auto& v : w) v = nd(rng);
  std::vector<uint64_t> wbits(C * ldb), wsplit(C * 2 * kw);
  std::vector<int32_t> tapsum(C * 9);
  pack_conv_weight(w.data(), C, C, 3, 3, wbits.data(), ldb, tapsum.data());
  split_rows(wbits.data(), C, ldb, kw, wsplit.data(), 1);
  ConvParams p{1, C, H, H, {C * H * H, H * H, H, 1}, C, 3, 3, 1, 1, 1, 1, 1, 1, 1, H, H, ldb};
  const Path path = parse_path(PATH_NAME);
  for (int i = 0; i < 3000; ++i)
    conv2d(p, x.data(), nullptr, wbits.data(), panel_kernel(path).split ? wsplit.data() : nullptr, tapsum.data(),
           scale.data(), bias.data(), out.data(), nullptr, path, 1);
}
CPP
  for v in old new; do
    src=$([ $v = old ] && echo "$tmp/old/csrc" || echo "$here/csrc")
    g++ -std=c++17 -O3 -g -ffp-contract=off -pthread -I"$src" -DPATH_NAME="\"$path\"" "$tmp/one.cpp" $(ls "$src"/*.cpp | grep -v bindings.cpp) -ldl -o "$tmp/one_$v"
    echo "perf, 64 -> 64 @ 56x56, $v: share of samples per function (top 6)"
    perf record -q -o "$tmp/perf_$v.data" "$tmp/one_$v"
    perf report -i "$tmp/perf_$v.data" --stdio 2> /dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 6' \
      | sed 's/(anonymous namespace):://; s/std::_Function_handler<void (long), //' | cut -c1-120
    # where the packer's own samples fall (perf annotate): each instruction with >= 10% of them, after
    # the instruction before it (a stalled instruction's samples land on the next one)
    sym=$(perf report -i "$tmp/perf_$v.data" --stdio 2> /dev/null | grep -o 'onebit::.*pack_transpose_with<.*>$' \
      | awk 'NR == 1')
    if [ -n "$sym" ]; then
      echo "  perf annotate of ${sym//(anonymous namespace)::/}: instructions with >= 10% of its samples"
      perf annotate -i "$tmp/perf_$v.data" --stdio -s "$sym" 2> /dev/null \
        | awk '$2 == ":" { if ($1 + 0 >= 10) { if (prev != shown) print prev; print; shown = $0 } prev = $0 }' \
        | cut -c1-100
    fi
  done
fi
