#!/usr/bin/env bash
# Copy a finished run's results.json into results/runs/NAME.json and regenerate the README table.
#   bash scripts/record_run.sh RUN_DIR [NAME]
set -euo pipefail
run=${1:?usage: record_run.sh RUN_DIR [NAME]}
name=${2:-$(basename "$run")}
test -f "$run/results.json" || { echo "record_run: $run/results.json not found (has the run finished?)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$here/results/runs"
dst="$here/results/runs/$name.json"
if [ -f "$dst" ] && ! cmp -s "$run/results.json" "$dst" && [ "${RECORD_FORCE:-}" != 1 ]; then
  echo "record_run: $dst holds another run's results; not replaced (another NAME, or RECORD_FORCE=1 to replace it)" >&2
  exit 1
fi
cp "$run/results.json" "$dst"
python3 "$here/scripts/results_table.py"
echo "recorded $name"
