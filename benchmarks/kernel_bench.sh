#!/usr/bin/env bash
# Build and run csrc/tests/kernel_bench.cpp: the engine's 3x3 convolutions and its popcount kernel
# timed in C++ (one thread, batch 1), for comparing kernel variants without Python in the way;
# then csrc/tests/popcount_peak.cpp: the machine's ceiling for that kernel (AVX-512 only).
#   bash benchmarks/kernel_bench.sh [CALLS [PATH]]   (PATH: auto (default), avx512, avx2 or portable;
#                                                    needs g++; same flags as the package build)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
exe=$(mktemp -d)/kernel_bench
sources=$(ls "$here"/csrc/*.cpp | grep -v bindings.cpp)
g++ -std=c++17 -O3 -ffp-contract=off -pthread -I"$here/csrc" "$here/csrc/tests/kernel_bench.cpp" $sources -ldl -o "$exe"
"$exe" "${1:-300}" "${2:-auto}"
g++ -std=c++17 -O3 "$here/csrc/tests/popcount_peak.cpp" -o "$exe.peak"
"$exe.peak"
