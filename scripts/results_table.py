"""Regenerate the README's results table from result files (never typed by hand).

    python scripts/results_table.py            # rewrites the block between the markers in README.md
    python scripts/results_table.py --check    # exit 1 if README.md is out of date

Reads results/runs/*.json: each is the results.json that `onebit train` wrote into a run
directory, copied here when the run finished (scripts/record_run.sh does the copy).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def table() -> str:
    rows = []
    for p in sorted((ROOT / "results" / "runs").glob("*.json")):
        r = json.loads(p.read_text())
        m = r["metrics"]
        cpu = r.get("machine", {}).get("cpu", "?")
        gpu = r.get("machine", {}).get("cuda")
        rows.append(f"| {r['recipe']} | {r['model']} | {r['epochs']} | {fmt(m.get('best_val_top1'))} | "
                    f"{fmt(m.get('final_val_top1'))} | {r['n_val']} | {r['wall_time_s'] / 3600:.1f} h | "
                    f"{gpu or cpu} | {r['commit']} | `results/runs/{p.name}` |")
    if not rows:
        return "No finished runs recorded yet."
    head = ("| recipe | model | epochs | best val top-1 (%) | final val top-1 (%) | val images | wall time | "
            "machine | commit | file |\n|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    readme = (ROOT / "README.md").read_text()
    if START not in readme or END not in readme:
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 2
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if args.check:
        return 0 if new == readme else 1
    (ROOT / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
