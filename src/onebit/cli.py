"""The `onebit` command line: `onebit <command> --help` for each command."""
from __future__ import annotations

import argparse
import sys


def cmd_list_models(args) -> int:
    from .models import list_models
    for name in list_models(args.pattern, pretrained=args.pretrained):
        print(name)
    return 0


def cmd_list_recipes(args) -> int:
    from .train.recipe import list_recipes, recipe_path
    import yaml
    for name in list_recipes():
        desc = " ".join((yaml.safe_load(recipe_path(name).read_text()).get("description") or "").split())
        print(f"{name:32s} {desc[:100]}")
    return 0


def cmd_train(args) -> int:
    from .train import load_recipe, train
    data_root = None
    if args.resume:  # the run's own recipe is used; only the data location may change
        sets = args.set or []
        if any(not s.startswith("data.root=") for s in sets):
            raise ValueError("with --resume only --set data.root=PATH may be given (the run keeps its recipe)")
        data_root = sets[-1].split("=", 1)[1] if sets else None
        recipe = None
    elif not args.recipe:
        raise ValueError("train needs --recipe NAME|FILE (or --resume to continue a run)")
    else:
        recipe = load_recipe(args.recipe, args.set or [])
    res = train(recipe, args.out, resume=args.resume, force=args.force, quiet=args.quiet, data_root=data_root)
    if res.get("interrupted"):
        return 130
    m = res["metrics"]
    print(f"done: {res['recipe']}  best val top-1 {m['best_val_top1']}  final val top-1 {m['final_val_top1']}  "
          f"({res['epochs']} epochs, {res['wall_time_s']:.0f} s) -> {args.out}/results.json")
    return 0


def load_for_eval(spec: str):
    """(model, meta) from a checkpoint path or zoo:NAME."""
    from .train.checkpoint import load_model
    if spec.startswith("zoo:"):
        from . import zoo
        return zoo.load_with_meta(spec[4:])
    return load_model(spec)


def eval_dataset(data: str, split: str, class_names: list[str]):
    from . import data as D
    if data == "sample":
        return D.load_sample("val" if split == "val" else split)
    return D.load_image_folder(data, split, class_names=class_names)


def eval_loader(data: str, split: str, meta: dict, batch_size: int, shuffle: bool = False):
    """A loader over ``data``/``split`` prepared as the model expects (its size and normalisation)."""
    from . import data as D
    ds = eval_dataset(data, split, meta["class_names"])
    size = meta["input_size"][-1]
    tf = D.Normalize(meta["mean"], meta["std"])
    if not ds.is_stacked or ds.images.shape[1] != size:
        tf = D.Compose([D.Resize(int(round(size / 0.875)) if size > 64 else size), D.CenterCrop(size), tf])
    return D.BatchLoader(ds, batch_size, shuffle=shuffle, transform=tf)


def cmd_eval(args) -> int:
    import json
    from .train.evaluate import confusion_text, evaluate
    model, meta = load_for_eval(args.checkpoint)
    loader = eval_loader(args.data, args.split, meta, args.batch_size)
    res = evaluate(model, loader, list(meta["class_names"]))
    res = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, **res}
    if args.png:
        from .analysis_plots import confusion_png
        confusion_png(res, args.png)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.checkpoint} on {args.data} [{args.split}]: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
              f"n={res['n']}")
        for name, acc in res["per_class"].items():
            print(f"  {name:12s} {'-' if acc is None else f'{acc:.1f}%'}")
        print(confusion_text(res))
    return 0


def cmd_demo(args) -> int:
    """The main job on the embedded sample: train a ReSTE binary ResNet-20, evaluate it, print accuracy."""
    import time
    from pathlib import Path
    from .train import load_recipe, train
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    sets = list(args.set or []) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    recipe = load_recipe("demo-reste-resnet20-sample", sets)
    print(f"onebit demo: training {recipe['model']['name']} (ReSTE) on the embedded CIFAR-10 sample -> {out}")
    res = train(recipe, out, force=args.force)
    if res.get("interrupted"):
        return 130
    m = res["metrics"]
    print(f"validation top-1 {m['final_val_top1']:.2f}% (best {m['best_val_top1']:.2f}%) on {res['n_val']} held-out "
          f"images after {res['epochs']} epochs, {res['wall_time_s']:.0f} s")
    return 0


def cmd_landscape(args) -> int:
    from .analysis.landscape import loss_landscape, save_landscape
    model, meta = load_for_eval(args.checkpoint)
    loader = eval_loader(args.data, args.split, meta, args.batch_size, shuffle=True)
    batches = []
    for x, y in loader:
        batches.append((x, y))
        if len(batches) >= args.batches:
            break
    res = loss_landscape(model, batches, args.resolution, args.span, args.seed)
    res["checkpoint"] = args.checkpoint
    paths = save_landscape(res, args.out, title=f"({meta.get('recipe') or meta['model']})")
    center = res["loss"][args.resolution // 2][args.resolution // 2]
    print(f"landscape of {args.checkpoint}: {args.resolution}x{args.resolution} points over +-{args.span}, "
          f"{res['images']} images, centre loss {center:.4f} -> {', '.join(map(str, paths))}")
    return 0


def load_any_model(spec: str):
    """(model, input_size or None) from a registry name, a zoo:NAME or a checkpoint path."""
    from pathlib import Path
    from .models import create_model
    if spec.startswith("zoo:") or Path(spec).suffix in (".pt", ".pth") or Path(spec).is_file():
        model, meta = load_for_eval(spec)
        return model, tuple(meta["input_size"])
    return create_model(spec).eval(), None


def parse_size(text: str | None):
    if text is None:
        return None
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"--input-size must be C,H,W like 3,224,224, got {text!r}")
    return size


def default_size(model) -> tuple:
    from .models.resnet import ResNet
    stem = getattr(model, "stem", None)
    if isinstance(model, ResNet) and stem is not None and stem[0].kernel_size == (3, 3):
        return (3, 32, 32)
    return tuple(getattr(model, "default_input_size", (3, 224, 224)))


def cmd_summary(args) -> int:
    import json
    from .analysis import complexity
    model, size = load_any_model(args.model)
    size = parse_size(args.input_size) or size or default_size(model)
    report = complexity(model, size)
    if args.json:
        print(json.dumps({"model": args.model, "input_size": list(size), **report.to_dict()}))
    else:
        print(f"{args.model} at input {'x'.join(map(str, size))}")
        print(report.table(hide_empty=not args.all))
    return 0


def cmd_capability(args) -> int:
    import json
    from .analysis import capability
    model, size = load_any_model(args.model)
    size = parse_size(args.input_size) or size
    res = capability(model, size, omit_attention=args.omit_attention)
    if args.png:
        from .analysis_plots import capability_png
        capability_png(res, args.png, title=args.model)
    if args.json:
        print(json.dumps({"model": args.model, **res}))
    else:
        for row in res["per_layer"]:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
        print(f"total representational capability of the classifier's input: {res['total']:,}")
    return 0


def cmd_report(args) -> int:
    from .analysis.report import write_report
    path = write_report(args.path, args.out, args.data, args.batch_size)
    print(f"report: {path}")
    return 0


def cmd_tsne(args) -> int:
    from .analysis.features import penultimate_features, tsne_png
    model, meta = load_for_eval(args.checkpoint)
    loader = eval_loader(args.data, args.split, meta, 256, shuffle=True)
    feats, labels = penultimate_features(model, loader, args.max_images)
    tsne_png(feats, labels, meta["class_names"], args.out, seed=args.seed, perplexity=args.perplexity,
             title=f"{meta.get('recipe') or meta['model']}: penultimate features")
    print(f"t-SNE of {len(labels)} images -> {args.out}")
    return 0


def cmd_indicators(args) -> int:
    import json
    import torch
    from .analysis.indicators import indicator_curves, indicators_png
    o_values = tuple(float(v) for v in args.o.split(","))
    if args.checkpoint:
        model, meta = load_for_eval(args.checkpoint)
        curves = indicator_curves(model, o_values)
        title = f"latent weights of {meta.get('recipe') or meta['model']}"
    else:
        curves = indicator_curves(torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * args.gaussian,
                                  o_values)
        title = f"Gaussian latent values, std {args.gaussian:g}"
    indicators_png(curves, args.out, title=title, mark_o=args.o_end)
    if args.json:
        print(json.dumps(curves))
    else:
        for o, e, g in zip(curves["o"], curves["estimating_error"], curves["gradient_instability"]):
            print(f"o={o:<4g} estimating error {e:.4f}  gradient instability {g:.4f}")
        print(f"-> {args.out}")
    return 0


def cmd_zoo_add(args) -> int:
    from . import zoo
    path = zoo.add(args.checkpoint, args.name)
    print(f"added {args.name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="onebit", description="1-bit neural networks for vision")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list-models", help="list registry model names")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true", help="only names with zoo weights")
    p.set_defaults(fn=cmd_list_models)
    p = sub.add_parser("list-recipes", help="list the recipes that ship with onebit")
    p.set_defaults(fn=cmd_list_recipes)
    p = sub.add_parser("train", help="train a model from a recipe")
    p.add_argument("--recipe", help="recipe name (onebit list-recipes) or a .yaml path (not needed with --resume)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--force", action="store_true", help="start over in an existing run directory")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint or zoo:NAME on an image folder")
    p.add_argument("checkpoint", help="checkpoint path or zoo:NAME")
    p.add_argument("--data", required=True, help="image folder ROOT (with ROOT/<split>/<class>/*) or 'sample'")
    p.add_argument("--split", default="val", help="sub-folder to evaluate (val or test)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--png", help="also write the confusion matrix as a PNG here")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("landscape", help="2-D loss landscape (Li et al. 2018) of a checkpoint: PNGs and the grid")
    p.add_argument("checkpoint", help="checkpoint path or zoo:NAME")
    p.add_argument("--data", required=True, help="image folder ROOT or 'sample'")
    p.add_argument("--split", default="val")
    p.add_argument("--out", default="landscape", help="output folder (contour.png, surface.png, grid.json)")
    p.add_argument("--resolution", type=int, default=21)
    p.add_argument("--span", type=float, default=1.0)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_landscape)
    p = sub.add_parser("summary", help="per-layer parameters, memory in bits, BOPs/FLOPs/OPs/OPs+")
    p.add_argument("model", help="registry name, zoo:NAME or checkpoint path")
    p.add_argument("--input-size", help="C,H,W (default: the model's own)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="also list layers without parameters or operations")
    p.set_defaults(fn=cmd_summary)
    p = sub.add_parser("capability", help="representational capability (BinaryViT Appendix B)")
    p.add_argument("model", help="registry name, zoo:NAME or checkpoint path")
    p.add_argument("--input-size", help="C,H,W")
    p.add_argument("--omit-attention", action="store_true", help="leave out the P V term as the paper's total does")
    p.add_argument("--png", help="also plot the capability after each layer (as ES-BNN Fig. 4)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_capability)
    p = sub.add_parser("report", help="one self-contained HTML page for a run directory or checkpoint")
    p.add_argument("path", help="run directory or checkpoint")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--data", help="validation data instead of the run's: image folder ROOT or 'sample'")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("tsne", help="t-SNE of penultimate features coloured by class (ES-BNN Fig. 9)")
    p.add_argument("checkpoint", help="checkpoint path or zoo:NAME")
    p.add_argument("--data", required=True, help="image folder ROOT or 'sample'")
    p.add_argument("--split", default="val")
    p.add_argument("--max-images", type=int, default=2000)
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="tsne.png")
    p.set_defaults(fn=cmd_tsne)
    p = sub.add_parser("indicators", help="ReSTE's estimating error and gradient instability against o")
    p.add_argument("checkpoint", nargs="?", help="checkpoint or zoo:NAME (its latent weights); default Gaussian")
    p.add_argument("--o", default="1,1.5,2,2.5,3,3.5,4", help="comma-separated o values")
    p.add_argument("--o-end", type=float, help="mark this o (e.g. the o_end a model was trained to)")
    p.add_argument("--gaussian", type=float, default=0.5, help="std of the Gaussian values without a checkpoint")
    p.add_argument("--out", default="indicators.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_indicators)
    p = sub.add_parser("zoo-add", help="export a checkpoint's model into onebit's zoo folder")
    p.add_argument("checkpoint")
    p.add_argument("--name", required=True, help="zoo name, after the recipe: e.g. reste_resnet20_cifar10")
    p.set_defaults(fn=cmd_zoo_add)
    p = sub.add_parser("demo", help="the main job on the embedded default data")
    p.add_argument("--out", help="run directory (default runs/demo-<time>)")
    p.add_argument("--epochs", type=int, help="override the demo's epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--force", action="store_true")
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
