"""Packed engine vs the PyTorch model on every image of a validation split.

    python benchmarks/pack_exactness.py CHECKPOINT|zoo:NAME [...] [--data sample|ROOT] [--split val]

For each model, packed without and with BN folding, and unfolded with int8 first and last layers
(the issue's post-training quantization option): how many images get a different top-1 prediction,
the largest logit difference relative to the largest logit of that image, whether the logits are
bit-identical, and the top-1 accuracy of each (and of the PyTorch model) against the labels, with
the SHA-256 of the weights file checked (a zoo entry's safetensors, or the checkpoint).
Appends to results/pack_exactness.json; docs/deploy.md's zoo table is generated from it
(scripts/results_table.py), for the entries whose weights it checked.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from onebit.cli import eval_loader, load_for_eval
from onebit.deploy import cpu_features, get_path, pack, quantize_int8
from onebit.train.loop import git_commit
from onebit.zoo import ZOO_DIR


def weights_file(spec: str) -> Path:
    return ZOO_DIR / f"{spec[4:]}.safetensors" if spec.startswith("zoo:") else Path(spec)


def compare(spec: str, data: str, split: str) -> dict:
    model, meta = load_for_eval(spec)
    packed = {"unfolded": pack(model), "fold_bn": pack(model, fold_bn=True), "int8_first_last": pack(model)}
    int8_layers = quantize_int8(packed["int8_first_last"])
    stats = {kind: {"images": 0, "prediction_mismatches": 0, "max_rel_logit_error": 0.0, "bit_identical": True,
                    "correct": 0} for kind in packed}
    correct = 0
    with torch.no_grad():
        for x, y in eval_loader(data, split, meta, 250):
            ref = model(x)
            correct += int((ref.argmax(1) == y).sum())
            for kind, p in packed.items():
                out, s = p(x), stats[kind]
                rel = (out - ref).abs().amax(1) / ref.abs().amax(1).clamp_min(1e-30)
                s["images"] += len(x)
                s["prediction_mismatches"] += int((out.argmax(1) != ref.argmax(1)).sum())
                s["max_rel_logit_error"] = max(s["max_rel_logit_error"], float(rel.max()))
                s["bit_identical"] &= bool(torch.equal(out, ref))
                s["correct"] += int((out.argmax(1) == y).sum())
    n = stats["unfolded"]["images"]
    for s in stats.values():
        s["top1"] = 100.0 * s.pop("correct") / max(n, 1)
    digest = hashlib.sha256(weights_file(spec).read_bytes()).hexdigest()
    return {"model": spec, "registry_name": meta.get("model"), "weights_sha256": digest, "data": data, "split": split,
            "top1_pytorch": 100.0 * correct / max(n, 1), "int8_layers": int8_layers, **stats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="sample")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "pack_exactness.json"))
    args = ap.parse_args(argv)
    rows = []
    for spec in args.models:
        row = compare(spec, args.data, args.split)
        rows.append(row)
        print(f"{spec} [pytorch]: top-1 {row['top1_pytorch']:.2f}%")
        for kind in ("unfolded", "fold_bn", "int8_first_last"):
            s = row[kind]
            print(f"{spec} [{kind}]: {s['images']} images, {s['prediction_mismatches']} different predictions, "
                  f"max relative logit error {s['max_rel_logit_error']:.2e}, bit-identical {s['bit_identical']}, "
                  f"top-1 {s['top1']:.2f}% ({s['top1'] - row['top1_pytorch']:+.2f})")
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() else []
    old.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), "engine_path": get_path(),
                "cpu_features": cpu_features(), "command": " ".join(["python", *sys.argv]), "results": rows})
    out.write_text(json.dumps(old, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
