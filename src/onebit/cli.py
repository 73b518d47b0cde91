"""The `onebit` command line: `onebit <command> --help` for each command."""
from __future__ import annotations

import argparse
import sys


def cmd_list_models(args) -> int:
    from .models import list_models
    for name in list_models(args.pattern, pretrained=args.pretrained):
        print(name)
    return 0


def cmd_demo(args) -> int:
    """Smoke run of the main job: a binary ResNet-20 takes a few training steps on synthetic data."""
    import time

    import torch
    import torch.nn.functional as F

    from . import create_model, set_progress
    torch.manual_seed(0)
    model = create_model("bireal_resnet20", input_binarizer="reste", weight_binarizer="reste")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    t0 = time.perf_counter()
    for step in range(args.steps):
        set_progress(model, step / max(1, args.steps - 1))
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        print(f"step {step + 1}/{args.steps}  loss {loss.item():.4f}")
    print(f"{args.steps} steps in {time.perf_counter() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="onebit", description="1-bit neural networks for vision")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list-models", help="list registry model names")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true", help="only names with zoo weights")
    p.set_defaults(fn=cmd_list_models)
    p = sub.add_parser("demo", help="the main job on the embedded default data")
    p.add_argument("--steps", type=int, default=5)
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as e:
        print(f"onebit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
