"""BinaryViT's ablation (paper 000, Table 3) on CIFAR-10 at one equal budget.

    python benchmarks/binaryvit_table3.py --data /path/to/cifar10 --epochs 10 --train-per-class 1000 \
        [--seeds 0] [--rows baseline gap pool affine pyramid] [--runs runs/table3] [--threads N]

The five rows are the five recipes binaryvit-cifar10-{baseline,gap,pool,affine,pyramid}: the
baseline binary DeiT, then each addition switched on in the paper's order (global average
pooling, the average-pooling branches, the affine LayerScale, the pyramid with Bi-SR-MHA).
Every row gets the same overrides: epochs, seed, data root, and optionally a seeded per-class
subset of the training images (data.train_per_class; the 5,000 held-out validation images are
the same whatever the subset), so that the table fits a CPU.  Runs go to RUNS/<row>-s<seed>
and resume when interrupted.  The summary (best validation top-1 per row, mean over seeds,
whether each row is at least as good as the one above, whether the full model reaches the
issue's 80%) goes to results/binaryvit_table3.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from onebit.train.loop import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment import run_or_resume  # noqa: E402
from machine import write_json  # noqa: E402

ROWS = ("baseline", "gap", "pool", "affine", "pyramid")  # Table 3, top to bottom


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 image folder (train/<class>/*)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=None,
                    help="train on this many images per class (seeded subset); default all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    ap.add_argument("--runs", default="runs/table3")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more override for every row (e.g. train.batch_size=64)")
    ap.add_argument("--out", default="results/binaryvit_table3.json")
    args = ap.parse_args(argv)

    common = [f"train.epochs={args.epochs}", f"data.root={args.data}", *args.set]
    if args.train_per_class:
        common.append(f"data.train_per_class={args.train_per_class}")
    if args.threads:
        common.append(f"train.threads={args.threads}")
    rows = [r for r in ROWS if r in args.rows]
    summary = {}
    for row in rows:
        accs, hours = [], []
        for seed in args.seeds:
            res = run_or_resume(f"binaryvit-cifar10-{row}", [*common, f"seed={seed}"],
                                Path(args.runs) / f"{row}-s{seed}")
            if res is None:
                print("interrupted; run the same command again to continue")
                return 130
            accs.append(res["metrics"]["best_val_top1"])
            hours.append(res.get("wall_time_s", 0.0) / 3600)
        summary[row] = {"recipe": f"binaryvit-cifar10-{row}", "seeds": args.seeds, "best_val_top1": accs,
                        "mean": statistics.mean(accs), "spread": (max(accs) - min(accs)) / 2, "hours": hours}
        print(f"{row:10s} {summary[row]['mean']:.2f} +- {summary[row]['spread']:.2f}  {accs}")
    means = [summary[r]["mean"] for r in rows]
    out = {"budget": {"epochs": args.epochs, "train_per_class": args.train_per_class, "overrides": common},
           "machine": machine_info(), "results": summary,
           "ordering_holds": all(b >= a for a, b in zip(means, means[1:])),
           "full_model_reaches_80": summary["pyramid"]["mean"] >= 80.0 if "pyramid" in summary else None}
    write_json(out, args.out, argv)
    print(f"ordering holds: {out['ordering_holds']}; full model >= 80%: {out['full_model_reaches_80']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
