"""Where should a packed model's BatchNorms run?  Latency of one model packed three ways.

    python benchmarks/bn_epilogue.py [zoo:NAME | registry name] [--rounds 6 --calls 300 --threads 1 --batch 1]

``epilogue``: pack(model), each BinaryUnit's BatchNorm, shortcut add and activation in the packed
conv's epilogue as torch computes them (bit-identical logits); ``torch``: pack(model,
fuse_units=False), the BatchNorms, adds and activations left to torch (what pack() falls back to
where the engine cannot reproduce torch's BatchNorm); ``folded``: pack(model, fold_bn=True) (BatchNorms folded into scale and bias, logits
approximate); ``float32``: the model itself.  Rounds alternate the variants, each round timing
``calls`` back-to-back calls of each; medians over all calls.  Writes
results/bn_epilogue.json (or --out) with the CPU, the commit and whether each variant's logits
equal the model's bit for bit.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import onebit
import onebit.deploy.packed as packed_mod
from onebit.deploy import engine, pack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, cpu_name, write_json  # noqa: E402


def load(spec: str) -> torch.nn.Module:
    if spec.startswith("zoo:"):
        return onebit.create_model(spec[4:], pretrained=True).eval()
    return onebit.create_model(spec).eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="zoo:reste_resnet20_cifar10")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", default="results/bn_epilogue.json")
    args = ap.parse_args()
    model = load(args.model)
    mode = packed_mod._torch_bn_fma()  # recorded: how this torch rounds its BatchNorm
    variants = {"epilogue": pack(model), "folded": pack(model, fold_bn=True), "float32": model,
                "torch": pack(model, fuse_units=False)}  # BatchNorm, add and activation in torch
    torch.set_num_threads(args.threads)
    engine.set_num_threads(args.threads)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    times = {k: [] for k in variants}
    with torch.no_grad():
        ref = model(x)
        exact = {k: bool(torch.equal(v(x), ref)) for k, v in variants.items()}
        for _ in range(args.rounds):
            for name, f in variants.items():
                for _ in range(10):
                    f(x)
                for _ in range(args.calls):
                    t = time.perf_counter()
                    f(x)
                    times[name].append(time.perf_counter() - t)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    print(f"{cpu_name()}  engine path {engine.best_path()}  torch BatchNorm with FMA: {mode}  "
          f"threads {args.threads}, batch {args.batch}")
    for k in variants:
        print(f"{k:>9}: {med[k]:.3f} ms (float32 / this {med['float32'] / med[k]:.2f}x)"
              f"  logits bit-identical: {exact[k]}")
    write_json({"model": args.model, "cpu": cpu_name(), "cpu_flags": cpu_flags(),
                          "engine_path": engine.best_path(), "torch_bn_fma": mode, "threads": args.threads, "batch": args.batch,
                          "rounds": args.rounds, "calls": args.calls, "median_ms": med, "bit_identical": exact}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
