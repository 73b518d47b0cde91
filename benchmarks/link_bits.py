"""Does handing packed activations from layer to layer pay?  (engine.conv2d emit= / pack(link_bits=))

    python benchmarks/link_bits.py [--rounds 200 --reps 21]

Per layer (the three 3x3 convs of the issue's speed bar, batch 1, 1 thread): float input and float
output (the default), float input with float + bits output (the producer's extra cost), bits input
with float output (the consumer's saving), bits in and float + bits out (a layer inside a linked
chain), and pack_nchw alone.  End to end: Bi-Real ResNet-18 at 224x224, batch 1, 1 thread,
pack(fold_bn=True) with link_bits False and True (the logits are checked equal).  Calls are
interleaved round by round; medians.  Writes results/link_bits.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import onebit
from onebit.deploy import engine, pack
from onebit.deploy.bench import time_interleaved

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags, cpu_name, write_json  # noqa: E402


def layer_cases(c: int, hw: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    bits, tapsum = engine.pack_conv_weight(rng.standard_normal((c, c, 3, 3)).astype(np.float32))
    kw = dict(kernel_size=3, padding=1, scale=np.ones(c, np.float32), bias=np.zeros(c, np.float32),
              wsplit=engine.split_weights(bits, 9 * ((c + 63) // 64)), num_threads=1)
    xb = engine.conv2d(x, bits, tapsum, emit="bits", **kw)
    return time_interleaved({
        "float_in_float_out": lambda: engine.conv2d(x, bits, tapsum, **kw),
        "float_in_both_out": lambda: engine.conv2d(x, bits, tapsum, emit="both", **kw),
        "bits_in_float_out": lambda: engine.conv2d(xb, bits, tapsum, **kw),
        "bits_in_both_out": lambda: engine.conv2d(xb, bits, tapsum, emit="both", **kw),
        "pack_nchw": lambda: engine.pack_nchw(x, num_threads=1),
    }, rounds, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200, help="interleaved rounds per layer")
    ap.add_argument("--reps", type=int, default=21, help="interleaved forwards per model")
    ap.add_argument("--out", default="results/link_bits.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    layers = {}
    for c, hw in ((64, 56), (256, 14), (512, 7)):
        layers[f"{c}@{hw}x{hw}"] = ms = layer_cases(c, hw, args.rounds)
        print(f"{c:3d} @ {hw:2d}x{hw:<2d} " + "  ".join(f"{k} {v:.3f}" for k, v in ms.items()))
    model = onebit.create_model("bireal_resnet18").eval()
    plain, linked = pack(model, fold_bn=True), pack(model, fold_bn=True, link_bits=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(x), linked(x)), "linked logits differ"
        e2e = time_interleaved({"unlinked": lambda: plain(x), "linked": lambda: linked(x)}, args.reps, 0)
    print(f"Bi-Real ResNet-18 224x224: unlinked {e2e['unlinked']:.2f} ms  linked {e2e['linked']:.2f} ms")
    write_json({"cpu": cpu_name(), "cpu_flags": cpu_flags(), "engine_path": engine.best_path(),
                "threads": 1, "layers_ms": layers, "bireal_resnet18_ms": e2e}, args.out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
