#!/usr/bin/env bash
# Start or continue the CIFAR-10 zoo runs of the pipeline issue, one process per core.
#   bash scripts/zoo_runs.sh [DATA_DIR] [RUNS_DIR]
# DATA_DIR receives the CIFAR-10 training JPEGs from ../shared/data (unpacked once);
# each run resumes from RUNS_DIR/<recipe>/last.pt when it exists (or from a copy of it kept
# in results/wip/<recipe>/last.pt), so the runs survive the end of a session.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-/tmp/cifar}
runs=${2:-/work/runs}
py=${PYTHON:-$here/.venv/bin/python}
if [ ! -d "$data/train" ]; then
  mkdir -p "$data"
  tar -xzf "$here/../shared/data/cifar10-jpeg-train.tar.gz" -C "$data"
fi
mkdir -p "$runs"
for recipe in ${RECIPES:-fp-resnet20-cifar10 reste-resnet20-cifar10}; do
  out="$runs/$recipe"
  if [ -f "$out/results.json" ]; then echo "$recipe: finished"; continue; fi
  if [ ! -f "$out/last.pt" ] && [ -f "$here/results/wip/$recipe/last.pt" ]; then
    mkdir -p "$out" && cp "$here/results/wip/$recipe/last.pt" "$out/"
    cp "$here/results/wip/$recipe/"*.jsonl "$out/" 2>/dev/null || true
  fi
  if [ -f "$out/last.pt" ]; then
    args=(train --out "$out" --resume --set "data.root=$data")
  else
    args=(train --recipe "$recipe" --out "$out" --set "data.root=$data" --set train.threads=1)
  fi
  nohup "$py" -m onebit.cli "${args[@]}" > "$out.log" 2>&1 &
  echo "$recipe: running (log $out.log)"
done
