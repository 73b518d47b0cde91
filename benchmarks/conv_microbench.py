"""Batch-1 3x3 binary convolution on the packed engine against torch's fp32 nn.Conv2d.

    python benchmarks/conv_microbench.py [--rounds 40 --reps 5 --threads 1 2 --path auto]

Layers (pad 1, stride 1): 64 -> 64 @ 56x56, 256 -> 256 @ 14x14, 512 -> 512 @ 7x7 (115.6 M MACs each).
``engine`` is PackedBinaryConv2d.forward end to end (float NCHW in, float NCHW out: binarize and
pack the input, im2col, XNOR-popcount GEMM, padding correction, scale / bias); ``torch`` is an
fp32 nn.Conv2d of the same shape under no_grad.  Each round times ``reps`` calls of the two
interleaved call by call (each call runs after the other one, so it finds caches filled by the
other's data: torch's 7 MB im2col evicts the engine's input and output), then ``reps`` calls of
each back to back (warm caches, as layer after layer of one network); rounds alternate so that
drifting machine load hits all alike.  The table gives medians and ratios of medians.  Writes
results/conv_microbench.json with the CPU name, flags and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

import onebit  # noqa: F401
from onebit.deploy import PackedBinaryConv2d, engine
from onebit.layers import BinaryConv2d

LAYERS = [(64, 56), (256, 14), (512, 7)]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_omp_passive, cpu_flags, cpu_name, reexec_omp_passive, write_json  # noqa: E402


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_layer(c: int, hw: int, threads: int, rounds: int, reps: int, path: str) -> dict:
    torch.manual_seed(0)
    binary = BinaryConv2d(c, c, 3, 1, 1, bias=False, input_binarizer={"name": "rsign", "estimator": "approx_sign"})
    binary.eval()
    packed = PackedBinaryConv2d.from_layer(binary)
    fp = nn.Conv2d(c, c, 3, 1, 1, bias=False).eval()
    x = torch.randn(1, c, hw, hw)
    with torch.no_grad():  # same result as the training layer
        err = float((packed(x) - binary(x)).abs().max() / binary(x).abs().max())
    torch.set_num_threads(threads)
    engine.set_num_threads(threads)
    engine.set_path(path)
    times = {"engine": [], "torch": [], "engine_b2b": [], "torch_b2b": []}

    def timed(f, key):
        t = time.perf_counter()
        f(x)
        times[key].append(time.perf_counter() - t)

    with torch.no_grad():
        for _ in range(3):  # warm-up
            packed(x), fp(x)
        for _ in range(rounds):
            for _ in range(reps):  # interleaved call by call: each call follows the other's
                timed(packed, "engine")
                timed(fp, "torch")
            packed(x)  # back to back (after one untimed call): each call follows itself, warm caches
            for _ in range(reps):
                timed(packed, "engine_b2b")
            fp(x)
            for _ in range(reps):
                timed(fp, "torch_b2b")
    res = {k: {"median_ms": 1e3 * statistics.median(v), "p25_ms": 1e3 * quantile(v, 0.25),
               "min_ms": 1e3 * min(v), "calls": len(v)} for k, v in times.items()}
    res["speedup"] = res["torch"]["median_ms"] / res["engine"]["median_ms"]
    res["speedup_p25"] = res["torch"]["p25_ms"] / res["engine"]["p25_ms"]
    res["speedup_b2b"] = res["torch_b2b"]["median_ms"] / res["engine_b2b"]["median_ms"]
    res["max_rel_error_vs_training_layer"] = err
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--path", default="auto", choices=engine.PATHS)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "conv_microbench.json"))
    add_omp_passive(ap)
    args = ap.parse_args(argv)
    reexec_omp_passive(args)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    print(f"{cpu_name()}  flags: {' '.join(cpu_flags())}  engine path: {engine.best_path() if args.path == 'auto' else args.path}")
    print(f"{'':<28}{'interleaved (medians)':^34} | {'back to back (medians)':^34}")
    print(f"{'layer':<20} {'threads':>7} {'torch ms':>10} {'engine ms':>10} {'speedup':>10}   | "
          f"{'torch ms':>10} {'engine ms':>10} {'speedup':>10}")
    for t in args.threads:
        for c, hw in LAYERS:
            r = bench_layer(c, hw, t, args.rounds, args.reps, args.path)
            name = f"{c}->{c} @ {hw}x{hw}"
            rows.append({"layer": name, "channels": c, "size": hw, "threads": t, **r})
            print(f"{name:<20} {t:>7} {r['torch']['median_ms']:>10.3f} {r['engine']['median_ms']:>10.3f} "
                  f"{r['speedup']:>9.2f}x   | {r['torch_b2b']['median_ms']:>10.3f} {r['engine_b2b']['median_ms']:>10.3f} "
                  f"{r['speedup_b2b']:>9.2f}x", flush=True)
    engine.set_path("auto")
    engine.set_num_threads(None)
    out = {
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "engine_features": engine.cpu_features(),
        "engine_path": engine.best_path() if args.path == "auto" else args.path,
        "engine_threads": engine.thread_backend(),
        "torch": torch.__version__, "python": sys.version.split()[0], "nproc": os.cpu_count(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "rounds": args.rounds, "reps": args.reps, "batch": 1, "kernel": "3x3, stride 1, pad 1",
        "engine_measures": "PackedBinaryConv2d.forward, float NCHW in -> float NCHW out",
        "results": rows,
    }
    write_json(out, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
