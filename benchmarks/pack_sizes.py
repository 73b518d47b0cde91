"""Packed file sizes against the theoretical 1-bit size and the float32 weights.

    python benchmarks/pack_sizes.py [--models bireal_resnet18 bireal_resnet20]

For each model (registry weights, seed 0: sizes do not depend on the values) and each packing
(unfolded, fold_bn, with and without int8 first/last layers): the file written by deploy.save,
its safetensors header, theoretical_bytes (1 bit per binary weight plus every other tensor in its
dtype) and float32_bytes (the state dict in float32).  Writes results/pack_sizes.json.
"""
from __future__ import annotations

import argparse
import struct
import sys
import tempfile
from pathlib import Path

import torch

import onebit
from onebit import deploy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_json  # noqa: E402

VARIANTS = [("unfolded", {}), ("fold_bn", {"fold_bn": True}),
            ("unfolded, int8 first/last", {"int8_first_last": True}),
            ("fold_bn, int8 first/last", {"fold_bn": True, "int8_first_last": True})]


def sizes(name: str) -> list[dict]:
    torch.manual_seed(0)
    model = onebit.create_model(name).eval()
    f32 = deploy.float32_bytes(model)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, kw in VARIANTS:
            path = Path(d) / f"{name}.onebit"
            packed = deploy.pack(model, fold_bn=kw.get("fold_bn", False))  # as `onebit pack` does
            int8 = deploy.quantize_int8(packed) if kw.get("int8_first_last") else []
            deploy.save(packed, path, fold_bn=kw.get("fold_bn", False))
            theo = deploy.theoretical_bytes(model, tuple(int8))
            size = path.stat().st_size
            header = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
            rows.append({"model": name, "packing": label, "file_bytes": size, "header_bytes": header,
                         "theoretical_bytes": theo, "file_over_theoretical": round(size / theo, 4),
                         "float32_bytes": f32, "compression": round(f32 / size, 2)})
            path.unlink()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["bireal_resnet18", "bireal_resnet20"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "pack_sizes.json"))
    args = ap.parse_args(argv)
    rows = [r for m in args.models for r in sizes(m)]
    for r in rows:
        print(f"{r['model']:<18} {r['packing']:<28} file {r['file_bytes']:>11,}  header {r['header_bytes']:>7,}  "
              f"theoretical {r['theoretical_bytes']:>11,}  x{r['file_over_theoretical']:.3f}  "
              f"float32 {r['float32_bytes']:>12,}  {r['compression']:.1f}x smaller")
    write_json({"results": rows}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
