"""End to end, batch 1, 224x224: packed Bi-Real ResNet-18 against its float32 twin and itself in torch.

    python benchmarks/e2e_resnet18.py [--reps 15 --threads 1 2]

Models: onebit.create_model('resnet18') (the float32 twin; the issue calls it fp_resnet18), create_model('bireal_resnet18') in torch
(binary layers simulated in float) and the same model after onebit.deploy.pack(model.eval(),
fold_bn=True) (XNOR-popcount engine).  Each round times one forward of each model, in turn; the
table gives medians and the ratio fp32 / packed.  The packed logits are checked against the torch
model's.  Writes results/e2e_resnet18.json with the CPU name and flags.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import onebit
from onebit.deploy import engine, pack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_omp_passive, cpu_flags, cpu_name, reexec_omp_passive, write_json  # noqa: E402


def profile_modules(model: torch.nn.Module, x: torch.Tensor, reps: int) -> dict:
    """Median ms per leaf module (packed convs count as leaves) and per module type, over ``reps`` forwards."""
    import collections
    from onebit.deploy import PackedBinaryConv2d

    times, starts, kinds, handles = collections.defaultdict(list), {}, {}, []
    for name, m in model.named_modules():
        if len(m._modules) == 0 or isinstance(m, PackedBinaryConv2d):
            kind = type(m).__name__
            if isinstance(m, torch.nn.Conv2d):
                kind += f" {m.kernel_size[0]}x{m.kernel_size[1]}"
            elif isinstance(m, PackedBinaryConv2d):
                kind += f" {m.kernel_size[0]}x{m.kernel_size[1]}" + (" s2" if m.stride[0] > 1 else "")
            kinds[name] = kind
            handles.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: starts.__setitem__(name, time.perf_counter())))
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: times[name].append(time.perf_counter() - starts[name])))
    total = []
    with torch.no_grad():
        model(x)
        times.clear()
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            total.append(time.perf_counter() - t0)
    for h in handles:
        h.remove()
    per_module = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    per_kind = collections.defaultdict(float)
    for k, v in per_module.items():
        per_kind[kinds[k]] += v
    tot = 1e3 * statistics.median(total)
    per_kind = dict(sorted(per_kind.items(), key=lambda kv: -kv[1]))
    per_kind["rest (adds, python, hooks)"] = tot - sum(per_module.values())
    return {"total_ms_with_hooks": tot, "per_type_ms": per_kind,
            "per_module_ms": {k: round(v, 4) for k, v in per_module.items() if kinds[k] != "Identity"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--profile", action="store_true", help="also time every module of the packed model")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "e2e_resnet18.json"))
    add_omp_passive(ap)
    args = ap.parse_args(argv)
    reexec_omp_passive(args)

    torch.manual_seed(0)
    fp = onebit.create_model("resnet18").eval()
    binary = onebit.create_model("bireal_resnet18").eval()
    packed = pack(binary, fold_bn=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref, got = binary(x), packed(x)
    err = float((got - ref).abs().max() / ref.abs().max())
    models = {"fp32": fp, "bireal_torch": binary, "bireal_packed": packed}

    rows = []
    print(f"{cpu_name()}  flags: {' '.join(cpu_flags())}  engine path: {engine.best_path()}")
    print(f"{'threads':>7} {'fp32 ms':>10} {'bireal torch ms':>16} {'packed ms':>10} {'fp32 / packed':>14}")
    for t in args.threads:
        torch.set_num_threads(t)
        engine.set_num_threads(t)
        times = {k: [] for k in models}
        with torch.no_grad():
            for m in models.values():  # warm-up
                m(x)
            for _ in range(args.reps):
                for k, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    times[k].append(time.perf_counter() - t0)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        row = {"threads": t, **{f"{k}_ms": v for k, v in med.items()},
               "speedup_vs_fp32": med["fp32"] / med["bireal_packed"],
               "speedup_vs_bireal_torch": med["bireal_torch"] / med["bireal_packed"]}
        rows.append(row)
        print(f"{t:>7} {med['fp32']:>10.2f} {med['bireal_torch']:>16.2f} {med['bireal_packed']:>10.2f} "
              f"{row['speedup_vs_fp32']:>13.2f}x", flush=True)
        if args.profile:
            row["packed_profile"] = profile_modules(packed, x, args.reps)
            for k, v in row["packed_profile"]["per_type_ms"].items():
                print(f"        {k:<36} {v:8.2f} ms")
    engine.set_num_threads(None)
    out = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "engine_path": engine.best_path(),
           "engine_threads": engine.thread_backend(), "torch": torch.__version__,
           "nproc": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
           "loadavg_after": os.getloadavg(), "batch": 1, "input": [3, 224, 224], "reps": args.reps,
           "packed_vs_torch_max_rel_logit_error": err, "results": rows}
    write_json(out, args.out)
    print(f"max relative logit difference packed vs torch: {err:.2e}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
