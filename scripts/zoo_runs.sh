#!/usr/bin/env bash
# Start or continue the CIFAR-10 zoo runs of the pipeline issue, one after another, each on all cores.
#   bash scripts/zoo_runs.sh [DATA_DIR] [RUNS_DIR]          (returns at once; the queue runs in the background)
# One run at a time with every core: measured on the 2-core VM, one 2-thread run trains at about
# 240 img/s against about 2 x 60 img/s for two 1-thread runs side by side.
# DATA_DIR receives the CIFAR-10 training JPEGs from ../shared/data (unpacked once); each run
# resumes from RUNS_DIR/<recipe>/last.pt when it exists (or from the copy kept in
# results/wip/<recipe>/last.pt), so the queue survives the end of a session: start it again.
# A finished run is recorded (scripts/record_run.sh), exported to the zoo under the recipe's name
# with dashes as underscores (the reactnet recipe needs zoo:fp_resnet20_cifar10 as teacher) and
# its packed twin checked on every held-out image (benchmarks/pack_exactness.py ->
# results/pack_exactness.json).
# RECIPES overrides the order; THREADS the thread count; PYTHON the interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-/tmp/cifar}
runs=${2:-/work/runs}
py=${PYTHON:-$here/.venv/bin/python}
threads=${THREADS:-$(nproc)}
recipes=${RECIPES:-fp-resnet20-cifar10 reste-resnet20-cifar10 reactnet-resnet20-cifar10 ste-resnet20-cifar10}
if [ ! -d "$data/train" ]; then
  mkdir -p "$data"
  tar -xzf "$here/../shared/data/cifar10-jpeg-train.tar.gz" -C "$data"
fi
mkdir -p "$runs"

queue() {
  for recipe in $recipes; do
    out="$runs/$recipe"
    zoo_name=${recipe//-/_}
    if [ ! -f "$out/results.json" ] && [ -f "$here/results/runs/$recipe.json" ]; then
      echo "$recipe: finished in an earlier session (results/runs/$recipe.json)"
      continue
    fi
    if [ ! -f "$out/results.json" ]; then
      if [ ! -f "$out/last.pt" ] && [ -f "$here/results/wip/$recipe/last.pt" ]; then
        mkdir -p "$out" && cp "$here/results/wip/$recipe/last.pt" "$out/"
        cp "$here/results/wip/$recipe/"*.jsonl "$out/" 2>/dev/null || true
      fi
      if [ -f "$out/last.pt" ]; then
        args=(train --out "$out" --resume --set "data.root=$data" --set "train.threads=$threads")
      else
        args=(train --recipe "$recipe" --out "$out" --set "data.root=$data" --set "train.threads=$threads")
      fi
      echo "$(date -u +%FT%TZ) $recipe: training (log $out.log)"
      "$py" -m onebit.cli "${args[@]}" >> "$out.log" 2>&1 || { echo "$recipe: failed, see $out.log"; return 1; }
    fi
    if [ ! -f "$here/results/runs/$recipe.json" ]; then
      bash "$here/scripts/record_run.sh" "$out" "$recipe"
    fi
    if ! "$py" -c "import onebit, sys; sys.exit('$zoo_name' not in onebit.list_models(pretrained=True))"; then
      "$py" -m onebit.cli zoo-add "$out/best.pt" --name "$zoo_name"
      # the deployment bar: the packed engine against the model on every held-out image
      "$py" "$here/benchmarks/pack_exactness.py" "zoo:$zoo_name" --data "$data" --split val
    fi
    echo "$(date -u +%FT%TZ) $recipe: finished"
  done
}

nohup bash -c "$(declare -f queue); here='$here' runs='$runs' data='$data' py='$py' threads='$threads' \
  recipes='$recipes' queue" >> "$runs/queue.log" 2>&1 &
echo "zoo queue running in the background (pid $!): $recipes -> $runs (log $runs/queue.log)"
