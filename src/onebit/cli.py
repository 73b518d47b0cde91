"""The `onebit` command line: `onebit <command> --help` for each command."""
from __future__ import annotations

import argparse
import os
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
    data_root = threads = compile_teacher = None
    if args.resume and (args.recipe or args.force):
        raise ValueError(f"--resume continues the run in --out with its own recipe: drop "
                         f"{'--recipe' if args.recipe else '--force'} (or drop --resume to start a new run)")
    if args.download and args.resume:
        raise ValueError("--download starts a new run's data; a resumed run reads the data it was started with "
                         "(--set data.root=PATH if it moved)")
    if args.download:
        args.set = (args.set or []) + ["data.download=true"]
    if args.resume:  # the run's own recipe; only where the data lives, threads and the teacher's compilation may change
        for s in args.set or []:
            key, _, value = s.partition("=")
            if key == "data.root":
                data_root = value
            elif key == "train.threads" and value.isdigit() and int(value) > 0:
                threads = int(value)
            elif key == "kd.compile" and value in ("true", "false"):
                compile_teacher = value == "true"
            else:
                raise ValueError(f"with --resume only --set data.root=PATH, --set train.threads=N (N >= 1) and "
                                 f"--set kd.compile=true|false may be given, not {s!r} (the run keeps its recipe)")
        recipe = None
    elif not args.recipe:
        raise ValueError("train needs --recipe NAME|FILE (or --resume to continue a run)")
    else:
        recipe = load_recipe(args.recipe, args.set or [])
        if args.download and recipe["data"]["name"] not in ("cifar10", "cifar100"):
            raise ValueError(f"--download fetches CIFAR-10/100, but recipe {recipe['name']!r} reads "
                             f"data.name={recipe['data']['name']}: put its data in place (data.root)")
    res = train(recipe, args.out, resume=args.resume, force=args.force, quiet=args.quiet, data_root=data_root,
                threads=threads, compile_teacher=compile_teacher)
    if res.get("interrupted"):
        return 130
    m = res["metrics"]
    print(f"done: {res['recipe']}  best val top-1 {m['best_val_top1']}  final val top-1 {m['final_val_top1']}  "
          f"({res['epochs']} epochs, {res['wall_time_s']:.0f} s) -> {args.out}/results.json")
    return 0


def is_packed_spec(spec: str) -> bool:
    """True for a packed model file (told by its header; a missing or unreadable .safetensors /
    .onebit path also counts, so that the packed loader says what is wrong with it)."""
    from pathlib import Path
    from .deploy.file import sniff
    if spec.startswith("zoo:"):
        return False
    return sniff(spec) == "packed" if Path(spec).is_file() else Path(spec).suffix in (".safetensors", ".onebit")


def load_for_eval(spec: str, packed: bool = False):
    """(model, meta) from a checkpoint path or zoo:NAME; with ``packed``, also a packed file."""
    from .train.checkpoint import load_model
    if spec.startswith("zoo:"):
        from . import zoo
        return zoo.load_with_meta(spec[4:])
    if is_packed_spec(spec):
        if not packed:
            raise ValueError(f"{spec} is a packed model file (inference only); this command needs a checkpoint "
                             f"or zoo:NAME")
        from .deploy import load_with_meta
        return load_with_meta(spec)
    return load_model(spec)


def _cifar_name(root, n_classes: int, download: bool) -> str | None:
    """'cifar10' / 'cifar100' when ROOT holds that data set's python pickles (ROOT/cifar-10-batches-py
    or the folder itself), or, with ``download``, the one with the model's number of classes."""
    from .data.cifar import cifar_dir
    for name, meta_file in (("cifar10", "batches.meta"), ("cifar100", "meta")):
        if (cifar_dir(root, name) / meta_file).is_file():
            return name
    if download:
        if n_classes not in (10, 100):
            raise ValueError(f"--download fetches CIFAR-10 or CIFAR-100, but the model has {n_classes} classes")
        return "cifar10" if n_classes == 10 else "cifar100"
    return None


def eval_dataset(data: str, split: str, class_names: list[str], val_split: dict | None = None,
                 download: bool = False):
    """``data``'s ``split``; for ``val`` on a folder with train/ but no val/, the seeded hold-out of
    train/ that the model was validated on (``val_split``, from its recipe), when it has one.  A ROOT
    holding the CIFAR-10/100 python pickles (``download``: fetched there if missing) gives their test
    split, or the hold-out of their training split for ``val``."""
    from pathlib import Path
    from . import data as D
    cifar = _cifar_name(Path(data), len(class_names), download) if data != "sample" else None
    if cifar:
        from .data.loader import holdout
        if split == "val":
            if not val_split:
                raise ValueError(f"the {cifar} pickles have a train and a test split and the model's recipe held out "
                                 f"no validation split: use --split test")
            train = D.load_cifar(data, cifar, "train", download=download).in_class_order(class_names)
            return holdout(train, val_split)[1]
        return D.load_cifar(data, cifar, split, download=download).in_class_order(class_names)
    if download:
        raise ValueError("--download fetches CIFAR-10/100 for models with 10 or 100 classes; --data 'sample' or an "
                         "image folder needs no download")
    if data == "sample":
        ds = D.load_sample("val" if split == "val" else split)
        if list(ds.class_names) != list(class_names):
            raise ValueError(f"the model's classes ({', '.join(class_names)}) are not the sample's CIFAR-10 classes "
                             f"in their order; evaluate it on an image folder with its classes (--data ROOT)")
        return ds
    root = Path(data)
    if split == "val" and val_split and not (root / "val").is_dir() and (root / "train").is_dir():
        from .data.loader import holdout
        hint = (f"{root} has no val/ folder, so --split val is the model's own hold-out of train/ ({val_split}); "
                f"evaluate --split test, or add a val/ folder")
        return holdout(D.load_image_folder(data, "train", class_names=class_names), val_split, hint)[1]
    return D.load_image_folder(data, split, class_names=class_names)


def eval_loader(data: str, split: str, meta: dict, batch_size: int, shuffle: bool = False, download: bool = False):
    """A loader over ``data``/``split`` prepared as the model expects (its size and normalisation)."""
    from . import data as D
    lacking = [k for k in ("class_names", "mean", "std", "input_size") if k not in meta]
    if lacking:
        raise ValueError(f"the model has no {', '.join(lacking)} (a bare registry model, or a checkpoint not "
                         f"written by onebit train); evaluate a run's best.pt or last.pt, zoo:NAME, or a file "
                         f"packed from one of those")
    ds = eval_dataset(data, split, meta["class_names"], (meta.get("data") or {}).get("val_split"), download)
    size = meta["input_size"][-1]
    tf = D.Normalize(meta["mean"], meta["std"])
    if not ds.is_stacked or ds.images.shape[1] != size:
        tf = D.Compose([D.Resize(int(round(size / 0.875)) if size > 64 else size), D.CenterCrop(size), tf])
    return D.BatchLoader(ds, batch_size, shuffle=shuffle, transform=tf)


def use_engine_path(args) -> None:
    """--engine-path: the packed models' engine kernel path for this command (a path the CPU lacks is
    refused with one line); without it, ONEBIT_ENGINE_PATH or 'auto'."""
    if args.engine_path:
        from .deploy import set_path
        set_path(args.engine_path)


def json_finite(v):
    """``v`` with every non-finite float (a NaN loss from NaN logits) as None: strict JSON, no NaN."""
    import math
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_finite(x) for x in v]
    return v


def cmd_eval(args) -> int:
    import json
    from .train.evaluate import confusion_text, evaluate
    use_engine_path(args)
    if args.png:
        from .analysis_plots import require_matplotlib
        writable_out(args.png, "--png")
        require_matplotlib()  # before the evaluation, not after it
    model, meta = load_for_eval(args.checkpoint, packed=True)
    loader = eval_loader(args.data, args.split, meta, args.batch_size, download=args.download)
    res = evaluate(model, loader, list(meta["class_names"]))
    res = {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, **res}
    if args.png:
        from .analysis_plots import confusion_png
        confusion_png(res, args.png)
    if args.json:
        print(json.dumps(json_finite(res), allow_nan=False))
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
    demo_pack(out)
    return 0


def demo_pack(run) -> None:
    """The demo's last step: pack the trained model, save it, time it against float32 PyTorch."""
    from pathlib import Path
    from . import deploy
    from .deploy.bench import quick_speedup
    from .train.checkpoint import load_model
    from .train.evaluate import evaluate
    model, meta = load_model(Path(run) / "last.pt")
    path = deploy.save(model, Path(run) / "model.packed.safetensors", meta=meta, force=True)
    packed = deploy.load(path)
    size, fp32 = path.stat().st_size, deploy.float32_bytes(model)
    top1 = evaluate(packed, eval_loader("sample", "val", meta, 256), list(meta["class_names"]))["top1"]
    t = quick_speedup(model, packed, tuple(meta["input_size"]))
    print(f"packed -> {path}: {size:,} bytes, {fp32 / size:.1f}x smaller than the float32 weights ({fp32:,} bytes); "
          f"packed validation top-1 {top1:.2f}%")
    print(f"batch-1 latency on this CPU ({t['threads']} threads): float32 PyTorch {t['float32_ms']:.2f} ms, packed "
          f"{t['packed_ms']:.2f} ms: " + (f"{t['speedup']:.1f}x faster" if t["speedup"] >= 1 else
                                          f"{1 / t['speedup']:.1f}x slower (a loaded machine?)"))


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
    if args.png:
        from .analysis_plots import require_matplotlib
        require_matplotlib()
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
        for o, e, g, f in zip(curves["o"], curves["estimating_error"], curves["gradient_instability"],
                              curves["fitting_error"]):
            print(f"o={o:<4g} estimating error {e:.4f}  gradient instability {g:.4f}  "
                  f"fitting error (authors') {f:.2f}")
        print(f"-> {args.out}")
    return 0


def load_for_pack(spec: str):
    """(model, meta, registry name, config) from a checkpoint, zoo:NAME or registry name."""
    from pathlib import Path
    from .models import create_model
    from .models.registry import _MODELS
    if not spec.startswith("zoo:") and Path(spec).is_file() and is_packed_spec(spec):
        raise ValueError(f"{spec} is already a packed file; pack its checkpoint instead")
    if spec.startswith("zoo:") or Path(spec).is_file() or Path(spec).suffix in (".pt", ".pth"):
        model, meta = load_for_eval(spec)
        return model, dict(meta), meta["model"], dict(meta.get("model_kwargs", {}))
    if spec not in _MODELS:
        create_model(spec)  # raises: unknown model, with suggestions
        raise ValueError(f"{spec!r} is neither a checkpoint nor a registry model name")
    model = create_model(spec).eval()
    return model, {"input_size": list(default_size(model))}, spec, {}


def cmd_pack(args) -> int:
    import json
    import warnings
    from pathlib import Path
    import torch
    from . import deploy
    use_engine_path(args)
    out = writable_out(args.out, "--out")
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    model, meta, name, config = load_for_pack(args.model)
    if args.data and "class_names" not in meta:
        raise ValueError("--data needs a checkpoint or zoo:NAME (a bare registry model has no classes)")
    # the evaluation data is read before the file is written: a bad --data leaves no file behind
    loader = eval_loader(args.data, args.split, meta, args.batch_size) if args.data else None
    packed = deploy.pack(model, fold_bn=args.fold_bn)
    int8 = deploy.quantize_int8(packed) if args.int8_first_last else []
    with warnings.catch_warnings():  # pack() above has said what it kept unpacked
        warnings.simplefilter("ignore", deploy.PackWarning)
        deploy.save(packed, out, name=name, config=config, fold_bn=args.fold_bn, meta=meta, force=args.force)
    # verify: the file gives the in-memory packed model's logits
    size = tuple(meta.get("input_size") or default_size(model))
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
    reloaded = deploy.load(out)
    with torch.no_grad():
        want, got, ref = packed(x), reloaded(x), model(x)
    if not torch.equal(want, got):
        out.unlink()
        raise ValueError(f"verification failed: {out} gives other logits than the packed model "
                         f"(max diff {float((want - got).abs().max()):.3g}); file removed")
    res = {"model": args.model, "registry_name": name, "out": str(out), "fold_bn": args.fold_bn, "int8_layers": int8,
           "file_bytes": out.stat().st_size, "theoretical_bytes": deploy.theoretical_bytes(model, tuple(int8)),
           "float32_bytes": deploy.float32_bytes(model), "max_abs_diff_vs_float32": float((got - ref).abs().max())}
    res["ratio_to_theoretical"] = res["file_bytes"] / res["theoretical_bytes"]
    res["compression_vs_float32"] = res["float32_bytes"] / res["file_bytes"]
    if Path(args.model).is_file():
        res["checkpoint_bytes"] = Path(args.model).stat().st_size
    if args.data:
        from .train.evaluate import evaluate
        res["top1_float32"] = evaluate(model, loader, list(meta["class_names"]))["top1"]
        res["top1_packed"] = evaluate(reloaded, loader, list(meta["class_names"]))["top1"]
    if args.json:
        print(json.dumps(json_finite(res), allow_nan=False))
        return 0
    opts = ("fold_bn" if args.fold_bn else "no fold_bn") + (f", int8 {', '.join(int8)}" if int8 else "")
    print(f"packed {args.model} ({name}, {opts}) -> {out}")
    print(f"  size on disk      {res['file_bytes']:>12,} bytes")
    print(f"  theoretical       {res['theoretical_bytes']:>12,} bytes  (1 bit per binary weight + real parameters and "
          f"buffers; file is {res['ratio_to_theoretical']:.3f}x)")
    print(f"  float32 weights   {res['float32_bytes']:>12,} bytes  ({res['compression_vs_float32']:.1f}x larger than "
          f"the packed file)")
    if "checkpoint_bytes" in res:
        print(f"  checkpoint file   {res['checkpoint_bytes']:>12,} bytes  (with optimizer state)")
    print("  verified: the reloaded file gives logits identical to the packed model's (random batch of 4)")
    print(f"  packed vs float32 model: max |logit diff| {res['max_abs_diff_vs_float32']:.2g}"
          + (" (int8 first/last layers change the logits)" if int8 else ""))
    if args.data:
        print(f"  top-1 on {args.data} [{args.split}]: float32 {res['top1_float32']:.2f}%, packed"
              f"{' with int8 first/last' if int8 else ''} {res['top1_packed']:.2f}% "
              f"({res['top1_packed'] - res['top1_float32']:+.2f} points)")
    return 0


def positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def nonnegative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def cmd_bench(args) -> int:
    import re
    from pathlib import Path
    from .deploy import bench
    use_engine_path(args)
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 2), 0
        args.batch, args.threads = args.batch or [1], args.threads or [1]
    batches, threads = args.batch or [1, 32], args.threads or [1, 2]
    if args.layer:
        if args.model or not args.shape:
            raise ValueError("--layer needs --shape (conv: C_IN,C_OUT,H,W[,K,STRIDE]; linear: M,K,N) and no MODEL")
        tag = f"layer_{args.layer}_{args.shape.replace(',', 'x')}"
    else:
        if not args.model:
            raise ValueError("bench needs a MODEL (registry name, zoo:NAME, checkpoint or packed file) or --layer")
        if not args.model.startswith("zoo:") and Path(args.model).suffix and not Path(args.model).exists():
            raise ValueError(f"{args.model} does not exist")
        tag = Path(args.model.removeprefix("zoo:")).name.split(".")[0]
    out = writable_out(args.out, "--out") if args.out else Path(
        f"results/bench_{re.sub(r'[^A-Za-z0-9_.-]', '_', tag)}.json")
    if not args.force and (out.exists() or out.with_suffix(".md").exists()):
        raise ValueError(f"{out} (or its .md) exists; pass --force to overwrite it, or --out FILE")
    if args.layer:
        res = bench.bench_layer(args.layer, args.shape, batches, threads, args.repeats, args.warmup, log=print)
    else:
        res = bench.bench_model(args.model, batches, threads, parse_size(args.input_size), args.repeats, args.warmup,
                                per_layer=not args.no_layers, log=print, fold_bn=not args.unfolded)
    print()
    print(bench.format_result(res, layer_rows=10))
    paths = bench.write_result(res, out)
    print(f"-> {paths[0]}, {paths[1]}")
    return 0


def cmd_zoo_add(args) -> int:
    from . import zoo
    path = zoo.add(args.checkpoint, args.name, force=args.force)
    print(f"added {args.name}: {path}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with the errors on one line, like every other onebit error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def writable_out(path, what: str):
    """Refuse an output path that cannot be written, before any work is done."""
    from pathlib import Path
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {p} is a directory; give a file name")
    parent = p.parent
    if not parent.exists():
        raise ValueError(f"{what} {p}: folder {parent} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise ValueError(f"{what} {p}: {parent} is a file, not a folder")
    return p


def add_engine_path(p) -> None:
    p.add_argument("--engine-path", choices=["auto", "avx512", "avx2", "portable"],
                   help="engine kernel path of the packed model (default: $ONEBIT_ENGINE_PATH, else auto: the "
                        "fastest this CPU has); one the CPU lacks is refused")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="onebit", description="1-bit neural networks for vision")
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
    p.add_argument("--download", action="store_true",
                   help="CIFAR recipes: fetch the data set into data.root if it is not there (= --set data.download=true)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint or zoo:NAME on an image folder")
    p.add_argument("checkpoint", help="checkpoint path or zoo:NAME")
    p.add_argument("--data", required=True, help="image folder ROOT (with ROOT/<split>/<class>/*) or 'sample'")
    p.add_argument("--split", default="val", help="sub-folder to evaluate: val or test (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--png", help="also write the confusion matrix as a PNG here (needs matplotlib)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default: %(default)s)")
    p.add_argument("--download", action="store_true",
                   help="CIFAR-10/100: fetch the python pickles into --data ROOT if they are not there")
    add_engine_path(p)
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
    p.add_argument("--png", help="also plot the cumulative capability after each layer (BinaryViT Appendix B)")
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
    p.add_argument("--force", action="store_true", help="replace an existing zoo entry of that name")
    p.set_defaults(fn=cmd_zoo_add)
    p = sub.add_parser("pack", help="pack a model's binary weights into bits and write the packed file")
    p.add_argument("model", help="checkpoint path, zoo:NAME, or a registry name (random weights, for benchmarks)")
    p.add_argument("--out", required=True, help="packed file to write (e.g. model.packed.safetensors)")
    p.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="fold BatchNorms after binary layers into their scale and bias and fuse the residual add: "
                        "faster, but float rounding moves by ~1e-7 and can flip a sign near 0 (default: no fold, "
                        "bit-identical to the model)")
    p.add_argument("--int8-first-last", action="store_true",
                   help="also quantize the first and last real-valued layers to int8 (per output channel)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--data", help="also evaluate float32 and packed on image folder ROOT or 'sample'")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_engine_path(p)
    p.set_defaults(fn=cmd_pack)
    p = sub.add_parser("bench", help="latency of the packed model (or one layer) against float32 PyTorch")
    p.add_argument("model", nargs="?", help="registry name, zoo:NAME, checkpoint or packed file")
    p.add_argument("--batch", type=positive, nargs="+", help="batch sizes (default 1 32)")
    p.add_argument("--threads", type=positive, nargs="+", help="thread counts (default 1 2)")
    p.add_argument("--input-size", help="C,H,W (default: the model's own)")
    p.add_argument("--repeats", type=positive, default=5, help="timed passes per measurement (median)")
    p.add_argument("--warmup", type=nonnegative, default=1, help="untimed passes first")
    p.add_argument("--layer", choices=["conv", "linear"], help="time one layer instead of a model")
    p.add_argument("--shape", help="--layer conv: C_IN,C_OUT,H,W[,K,STRIDE]; --layer linear: M,K,N")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer timings")
    p.add_argument("--unfolded", action="store_true",
                   help="pack without folding BatchNorms (bit-identical to the model) instead of fold_bn")
    p.add_argument("--quick", action="store_true", help="batch 1, 1 thread, at most 2 repeats, no warm-up")
    p.add_argument("--out", help="JSON result (default results/bench_NAME.json; Markdown beside it)")
    p.add_argument("--force", action="store_true", help="overwrite an existing result file")
    add_engine_path(p)
    p.set_defaults(fn=cmd_bench)
    p = sub.add_parser("demo", help="the main job on the embedded default data")
    p.add_argument("--out", help="run directory (default runs/demo-<time>)")
    p.add_argument("--epochs", type=int, help="override the demo's epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_demo)
    return ap


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings on the command line: one line each, like the errors."""
    print(f"onebit: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    import warnings
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed: the exit code, also when called in-process
        return e.code if isinstance(e.code, int) else 2
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a reader that went away (| head) shows up here, not at exit
        return code
    except BrokenPipeError:  # as the Python docs advise for SIGPIPE: no error line, exit 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the flush at exit then has nowhere to fail
        return 1
    except ValueError as e:
        print(f"onebit: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written
        where = f"{e.filename}: " if e.filename else ""
        print(f"onebit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("ONEBIT_TRACEBACK"):
            raise
        from .train.loop import TrainingDiverged
        if isinstance(e, TrainingDiverged):  # its message says what happened and what was kept
            print(f"onebit: error: {e}", file=sys.stderr)
            return 1
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"onebit: error: {type(e).__name__}: {first} (set ONEBIT_TRACEBACK=1 to see where)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
