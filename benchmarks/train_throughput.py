"""Training throughput (img/s) of binary ResNet-20 variants (and BinaryViT-CIFAR) against the fp32 ResNet-20.

    python benchmarks/train_throughput.py [--batch 128 --threads 2 --steps 30 --compile]
        [--models "fp32 resnet20" binaryvit_cifar ...] [--progress 0.5] [--torch-ops]

Runs forward + backward + SGD step on random 32x32 batches, interleaving the models over
several rounds so that drifting machine load affects them alike; reports the median img/s
per model and each model's ratio to fp32, and writes results/train_throughput.json.

The estimators' schedules are set to training progress ``--progress`` (default 0.5): at 0, ReSTE's
o is 1 and its backward is the cheap clipped STE, which would understate its cost in a real run.
``--torch-ops`` also times each binary model with torch's ops in place of the engine's training ops
(onebit.binarize.fused: the estimators' one-pass backward, and the forward of convolutions whose
operands are both signs).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import onebit
from onebit.binarize import fused

MODELS = {
    "fp32 resnet20": ("resnet20", {}),
    "bireal_resnet20 (clipped STE)": ("bireal_resnet20", {"input_binarizer": "clipped_ste"}),
    "bireal_resnet20 (ReSTE o_end=3)": ("bireal_resnet20", {"input_binarizer": {"name": "reste", "o_end": 3},
                                                           "weight_binarizer": {"name": "reste", "o_end": 3},
                                                           "scale": "tensor"}),
    "reactnet_resnet20": ("reactnet_resnet20", {}),
    "binaryvit_cifar": ("binaryvit_cifar", {}),  # Table 3's pyramid row (not in the default set)
}
DEFAULT = [m for m in MODELS if m != "binaryvit_cifar"]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, cpu_name, write_json  # noqa: E402


def time_steps(model, opt, x, y, steps: int, channels_last: bool, engine: bool = True) -> float:
    fused.use_engine(engine)
    model.train()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    rate = x.shape[0] * steps / (time.perf_counter() - t0)
    fused.use_engine(True)
    return rate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    ap.add_argument("--models", nargs="+", default=DEFAULT, choices=list(MODELS),
                    help="models to time (the fp32 ResNet-20 is always timed: the ratios refer to it)")
    ap.add_argument("--progress", type=float, default=0.5,
                    help="training progress in [0, 1] the estimators' schedules are set to")
    ap.add_argument("--torch-ops", action="store_true",
                    help="also time each binary model with torch's ops in place of the engine's training ops")
    ap.add_argument("--out", default="results/train_throughput.json")
    args = ap.parse_args(argv)
    models = ["fp32 resnet20"] + [m for m in args.models if m != "fp32 resnet20"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))

    runs = {}  # label -> (model, optimizer, engine training ops on)
    for label in models:
        name, kw = MODELS[label]
        model = onebit.create_model(name, **kw)
        onebit.set_progress(model, args.progress)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[label] = (model, opt, True)
        if args.torch_ops and label != "fp32 resnet20":
            runs[label + " [torch ops]"] = (model, opt, False)
        if args.compile:
            cm = torch.compile(model)
            runs[label + " [compiled]"] = (cm, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), True)
            if args.torch_ops and label != "fp32 resnet20":
                runs[label + " [compiled, torch ops]"] = (cm, runs[label + " [compiled]"][1], False)

    for label, (model, opt, eng) in runs.items():  # warm-up (and compilation)
        time_steps(model, opt, x, y, 3, args.channels_last, eng)
    samples = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, (model, opt, eng) in runs.items():
            samples[label].append(time_steps(model, opt, x, y, args.steps, args.channels_last, eng))

    fp = statistics.median(samples["fp32 resnet20"])
    rows = []
    for label, s in samples.items():
        med = statistics.median(s)
        rows.append({"model": label, "img_per_s": round(med, 1), "ratio_to_fp32": round(med / fp, 3),
                     "rounds": [round(v, 1) for v in s]})
        print(f"{label:40s} {med:8.1f} img/s   {med / fp:5.2f}x fp32")
    out = {
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads,
        "batch": args.batch, "steps_per_round": args.steps, "channels_last": args.channels_last,
        "progress": args.progress, "engine_training_ops": fused.engine_enabled(),
        "torch": torch.__version__, "python": platform.python_version(), "results": rows,
    }
    write_json(out, args.out, argv)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
