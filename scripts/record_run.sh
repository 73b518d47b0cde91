#!/usr/bin/env bash
# Copy a finished run's results.json into results/runs/NAME.json and regenerate the README table.
#   bash scripts/record_run.sh RUN_DIR [NAME]
set -euo pipefail
run=${1:?usage: record_run.sh RUN_DIR [NAME]}
name=${2:-$(basename "$run")}
test -f "$run/results.json" || { echo "record_run: $run/results.json not found (has the run finished?)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$here/results/runs"
cp "$run/results.json" "$here/results/runs/$name.json"
python3 "$here/scripts/results_table.py"
echo "recorded $name"
