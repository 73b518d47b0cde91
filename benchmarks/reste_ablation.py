"""ReSTE appendix ablation at one equal budget (paper 001, Tables 2-3), over several seeds.

    python benchmarks/reste_ablation.py --data /path/to/cifar10 --epochs 30 --seeds 0 1 \
        [--configs ste reste_cos3 reste_fixed3 ...] [--runs runs/ablation]

Each (config, seed) trains the ReSTE recipe's binary ResNet-20 with only the estimator
changed, into RUN/<config>-s<seed>; an existing run is resumed (or skipped when finished),
so the experiment survives interruptions and can be spread over sessions. The summary
(mean and spread of the best validation top-1 per config) goes to results/reste_ablation.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from onebit.train.loop import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment import run_or_resume  # noqa: E402
from machine import write_json  # noqa: E402


def reste(**kw):
    return {"name": "reste", **kw}


CONFIGS = {
    "ste": {"name": "clipped_ste", "c": 1.0},             # the classic clipped STE (the main paper's baseline)
    "reste_cos3": reste(o_end=3, schedule="cos"),         # the default: progressive o, cos
    "reste_cos2": reste(o_end=2, schedule="cos"),
    "reste_cos4": reste(o_end=4, schedule="cos"),
    "reste_linear3": reste(o_end=3, schedule="linear"),   # Table 3
    "reste_power3": reste(o_end=3, schedule="power"),
    "reste_fixed1": reste(o=1),                            # Table 2's o = 1 row (clipped STE, threshold 1.5)
    "reste_fixed2": reste(o=2),                            # Table 2 fixed o
    "reste_fixed3": reste(o=3),
    "reste_fixed4": reste(o=4),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-10 image folder (train/<class>/*)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--configs", nargs="+", default=["ste", "reste_cos3", "reste_fixed3"], choices=sorted(CONFIGS))
    ap.add_argument("--runs", default="runs/ablation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="results/reste_ablation.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a further recipe override for every run, e.g. model.pre_bn_act=identity")
    args = ap.parse_args(argv)

    summary = {}
    for cfg in args.configs:
        spec = json.dumps(CONFIGS[cfg])
        accs = []
        for seed in args.seeds:
            sets = [f"model.input_binarizer={spec}", f"model.weight_binarizer={spec}",
                    f"train.epochs={args.epochs}", f"seed={seed}", f"data.root={args.data}"]
            if args.threads:
                sets.append(f"train.threads={args.threads}")
            sets += args.set
            res = run_or_resume("reste-resnet20-cifar10", sets, Path(args.runs) / f"{cfg}-s{seed}")
            if res is None:
                print("interrupted; run the same command again to continue")
                return 130
            accs.append(res["metrics"]["best_val_top1"])
        summary[cfg] = {"estimator": CONFIGS[cfg], "seeds": args.seeds, "best_val_top1": accs,
                        "mean": statistics.mean(accs), "spread": (max(accs) - min(accs)) / 2,
                        "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        print(f"{cfg:16s} {summary[cfg]['mean']:.2f} +- {summary[cfg]['spread']:.2f}  {accs}")
    out = {"epochs": args.epochs, "machine": machine_info(), "results": summary}
    write_json(out, args.out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
