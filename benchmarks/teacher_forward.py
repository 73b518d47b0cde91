"""A KD teacher's forward pass, eager against torch.compile'd (what ``train.compile`` does to it).

    python benchmarks/teacher_forward.py [--teacher zoo:fp_resnet20_cifar10] [--batch 128] [--threads 2]
        [--rounds 5] [--reps 5] [--out results/teacher_forward.json]

The teacher runs as the trainer runs it (onebit.train.distill.Teacher: eval mode, no_grad) on a
random batch; the two variants alternate over the rounds so that drifting machine load hits both;
medians in ms per batch.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from onebit.train.distill import Teacher
from onebit.train.loop import build_teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, cpu_name, write_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="zoo:fp_resnet20_cifar10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per round")
    ap.add_argument("--out", default="results/teacher_forward.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = build_teacher(args.teacher)
    x = torch.randn(args.batch, *((3, 32, 32) if "cifar" in args.teacher else (3, 224, 224)))
    variants = {"eager": Teacher(net), "compiled": Teacher(net, compile=True)}
    t0 = time.perf_counter()
    variants["compiled"](x)
    compile_s = time.perf_counter() - t0
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, t in variants.items():
            t(x)
            for _ in range(args.reps):
                s = time.perf_counter()
                t(x)
                times[k].append((time.perf_counter() - s) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:9s} {v:8.1f} ms per batch of {args.batch}")
    print(f"compiled / eager: {med['eager'] / med['compiled']:.2f}x faster (compilation {compile_s:.1f} s)")
    write_json({"cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads, "batch": args.batch,
                "teacher": args.teacher, "torch": torch.__version__, "python": platform.python_version(),
                "compile_s": round(compile_s, 1), "median_ms": {k: round(v, 2) for k, v in med.items()},
                "speedup": round(med["eager"] / med["compiled"], 3),
                "all_ms": {k: [round(a, 2) for a in v] for k, v in times.items()}}, args.out, argv)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
