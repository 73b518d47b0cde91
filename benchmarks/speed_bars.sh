#!/usr/bin/env bash
# Issue 7's speed bars on this machine, in one go: the three 3x3 layers against torch fp32
# (conv_microbench.py), Bi-Real ResNet-18 end to end (e2e_resnet18.py) and the C++ kernel timings
# (kernel_bench.sh), then each figure against its bar for this machine's engine path:
#   AVX-512 VPOPCNTDQ: layers >= 12x at 1 thread and >= 8x at 2;  AVX2 only: layers >= 7x at 1 and 2;
#   both: ResNet-18 end to end >= 5x at 1 thread.
#   bash benchmarks/speed_bars.sh TAG [PYTHON]
# TAG names the files: results/conv_microbench_TAG.json, results/e2e_resnet18_TAG.json,
# results/kernel_bench_TAG.txt (for example zen3_run3); existing files are not overwritten.
# Pause trainings first (they share the cores).  The layer ratios are back-to-back medians (each
# call after itself, as layer after layer of one network), as in the README's tables.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tag=${1:?usage: bash benchmarks/speed_bars.sh TAG [PYTHON]}
py=${2:-$here/.venv/bin/python}
conv=$here/results/conv_microbench_$tag.json
e2e=$here/results/e2e_resnet18_$tag.json
kb=$here/results/kernel_bench_$tag.txt
for f in "$conv" "$e2e" "$kb"; do
  if [ -e "$f" ]; then echo "speed_bars: $f exists; choose another TAG" >&2; exit 1; fi
done
cd "$here"
"$py" benchmarks/conv_microbench.py --rounds 40 --out "$conv"
"$py" benchmarks/e2e_resnet18.py --reps 21 --out "$e2e"
{ echo "commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ), load: $(cat /proc/loadavg)"; bash benchmarks/kernel_bench.sh 300; } > "$kb.tmp"
mv "$kb.tmp" "$kb"
"$py" - "$conv" "$e2e" <<'EOF'
import json, sys
conv, e2e = (json.load(open(p)) for p in sys.argv[1:3])
avx512 = conv["engine_path"] == "avx512"
bars = {1: 12.0, 2: 8.0} if avx512 else {1: 7.0, 2: 7.0}
print(f"\n{conv['cpu']}, engine path {conv['engine_path']}: bars {bars[1]:g}x at 1 thread, {bars[2]:g}x at 2; "
      f"ResNet-18 5x at 1 thread")
for r in conv["results"]:
    s, bar = r["speedup_b2b"], bars[r["threads"]]
    print(f"  {r['layer']:<18} {r['threads']}T  torch {r['torch_b2b']['median_ms']:.3f} ms  engine "
          f"{r['engine_b2b']['median_ms']:.3f} ms  {s:5.2f}x  {'meets' if s >= bar else 'MISSES'} {bar:g}x")
for r in e2e["results"]:
    s = r["speedup_vs_fp32"]
    verdict = ("meets" if s >= 5.0 else "MISSES") + " 5x" if r["threads"] == 1 else "(no bar at 2 threads)"
    print(f"  bireal_resnet18 e2e  {r['threads']}T  fp32 {r['fp32_ms']:.2f} ms  packed {r['bireal_packed_ms']:.2f} ms"
          f"  {s:5.2f}x  {verdict}")
EOF
