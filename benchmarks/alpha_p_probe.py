"""How BinaryViT's attention step alpha_P (Eq. 8) moves in the first training steps on CIFAR-10.

    python benchmarks/alpha_p_probe.py [--steps 150 --batch 64 --threads 1]
        [--inits 0.005 keys] [--model binaryvit_cifar] [--out results/experiments/alpha_p_probe.json]

alpha_P starts at 0.005 (the authors' value, about 1 / 196 keys at ImageNet size).  With CIFAR's
short key sequences (16 keys in binaryvit_cifar's stages 1-3, 4 in stage 4) the mean probability is
1/16 to 1/4, so nearly every entry of softmax(A)/alpha_P exceeds 1 and rounds to alpha_P: attention
starts as uniform averaging, with no gradient to the scores through the clipped entries, and the
BatchNorm after P V makes the output blind to alpha_P's scale while every entry is clipped.  This
probe trains the model from its initialisation (Adam, lr 5e-4, cross-entropy, the embedded sample's
5,000 training images with crop + flip) and records, every ``--every`` steps and for each attention
layer, alpha_P (the raw parameter; the forward pass floors it at 1e-5) and the fractions of P entries at alpha_P ("saturated") and at 0; once with alpha_P
at 0.005 and once per other ``--inits`` value ("keys": 1 / the layer's number of keys).
Same seed, same batches for every init.

    python benchmarks/alpha_p_probe.py --checkpoint RUN/best.pt [RUN2/best.pt ...] [--out FILE]

reads trained models instead: each attention layer's alpha_P and its clipped and zero fractions
on 256 images of the embedded sample's validation split (eval mode).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import onebit
from onebit.data.loader import BatchLoader
from onebit.data.sample import load_sample
from onebit.data.transforms import cifar_eval_transform, cifar_train_transform
from onebit.layers.attention import BinaryAttention
from onebit.train.checkpoint import load_model


def attention_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BinaryAttention)]


def watch(model) -> dict:
    """{layer name: stats}, refreshed at every forward: alpha_P (the raw parameter), the fractions of
    P entries at alpha_P ("saturated") and at 0 under the floored step the forward pass uses, and
    the number of keys."""
    stats = {}
    for name, m in attention_layers(model):
        def fn(module, args, out, name=name):
            level = (args[0].detach() / module.effective_step().detach()).clamp(0, 1).round()  # Eq. 8 / alpha_P
            stats[name] = {"alpha": module.step.item(), "saturated": (level == 1).float().mean().item(),
                           "zero": (level == 0).float().mean().item(), "keys": args[0].shape[-1]}
        m.prob.register_forward_hook(fn)
    return stats


def probe(model_name: str, init: str, steps: int, batch: int, every: int, seed: int) -> dict:
    """Train ``model_name`` for ``steps`` Adam steps with alpha_P at ``init``; the trace of every layer."""
    torch.manual_seed(seed)  # alpha_init does not draw random numbers: the same weights for every init
    model = onebit.create_model(model_name, alpha_init=init if init == "keys" else float(init))
    stats = watch(model)
    batches = _forever(BatchLoader(load_sample("train"), batch, shuffle=True, transform=cifar_train_transform(),
                                   seed=seed, drop_last=True))
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    model.train()
    trace = []
    t0 = time.perf_counter()
    for step in range(steps + 1):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        if step % every == 0 or step == steps:
            trace.append({"step": step, "loss": round(loss.item(), 4), "layers": copy.deepcopy(stats)})
            print(f"init {init} step {step}: loss {loss.item():.3f}  " + "  ".join(
                f"{v['alpha']:.4f}/{v['saturated']:.2f}" for v in stats.values()), flush=True)
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"init": init, "seconds": round(time.perf_counter() - t0, 1), "trace": trace}


def inspect(path: str, images: int = 256) -> dict:
    """alpha_P and the P-entry fractions of every attention layer of a trained checkpoint."""
    model, _ = load_model(path)
    stats = watch(model)
    x, _ = next(iter(BatchLoader(load_sample("val"), images, transform=cifar_eval_transform())))
    with torch.no_grad():
        model(x)
    for name, v in stats.items():
        print(f"{path} {name}: alpha_P {v['alpha']:.4f}, clipped {v['saturated']:.3f}, zero {v['zero']:.3f}")
    return {"checkpoint": path, "layers": stats}


def _forever(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="binaryvit_cifar")
    ap.add_argument("--inits", nargs="+", default=["0.005", "keys"])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", nargs="+", default=None, help="inspect trained checkpoints instead")
    ap.add_argument("--out", default="results/experiments/alpha_p_probe.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/alpha_p_probe.py " + " ".join(argv or __import__("sys").argv[1:])
    if args.checkpoint:
        out = {"command": command, "data": "embedded sample, 256 validation images", "torch": torch.__version__,
               "checkpoints": [inspect(path) for path in args.checkpoint]}
    else:
        runs = [probe(args.model, init, args.steps, args.batch, args.every, args.seed) for init in args.inits]
        out = {"command": command, "model": args.model, "steps": args.steps, "batch": args.batch,
               "optimizer": "adam lr 5e-4", "loss": "cross-entropy",
               "data": "embedded sample (5,000 train), crop + flip", "seed": args.seed,
               "torch": torch.__version__, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
