"""Latency of packed models and layers against float32 PyTorch (``onebit bench``).

    res = bench_model("bireal_resnet18", batches=(1, 32), threads=(1, 2))
    print(format_model(res))
    res = bench_layer("conv", (256, 256, 14, 14, 3, 1))

Variants timed for a model: ``packed`` (onebit's engine; packed with fold_bn=True unless
``fold_bn=False``, ``--unfolded``), ``float32`` (the same model unpacked: its binary layers binarize latent float32 weights and activations in PyTorch,
what runs without onebit's engine) and, when the registry has one, the real-valued twin
(``fp_<rest>``, ``<name>_fp`` or the name without its method prefix, e.g. resnet18 for
bireal_resnet18).  Times are medians over ``repeats`` forward passes after ``warmup`` passes,
under ``torch.no_grad``, the variants taking turns within each round (a load change on the machine
hits them alike); ``torch.set_num_threads(n)`` sets both PyTorch's and the engine's
threads.  Per-layer times come from separate passes with forward pre/post hooks on every leaf
module (a binary layer counts as one leaf) and on the model; what the leaf hooks miss (residual
additions, reshapes) is the ``other`` row (median of whole passes minus the sum of leaf medians).
Weights do not change the time, so a packed file or a bare registry name is timed with random
float32 weights for the unpacked variants.
"""
from __future__ import annotations

import statistics
import time
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..layers.binary import BinaryConv2d, BinaryLayer, BinaryLinear
from . import engine
from .packed import _fused_unit, _Packed, pack
from .quant import _Int8


# --- timing -----------------------------------------------------------------------------------

class threads:
    """Context: torch.set_num_threads(n) and the engine following torch; restored on exit."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.saved = (torch.get_num_threads(), engine._num_threads)
        torch.set_num_threads(self.n)
        engine.set_num_threads(None)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved[0])
        engine.set_num_threads(self.saved[1])


def time_interleaved(fns: dict, repeats: int, warmup: int) -> dict:
    """{label: median ms}: each round times every ``fns[label]()`` once, in turn, so that a load
    change on the machine hits all of them alike (after ``warmup`` untimed rounds)."""
    times: dict = {k: [] for k in fns}
    with torch.no_grad():
        for i in range(warmup + repeats):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                if i >= warmup:
                    times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _time_grid(variants: dict, inputs: list, thread_counts: Sequence[int], repeats: int, warmup: int, base: str,
               layers=None, log=None) -> list[dict]:
    """One row per (batch, input) in ``inputs`` and thread count: the median ms of every variant
    (timed interleaved), ``speedup`` = base / packed, and ``layers(x)`` when given."""
    runs = []
    for b, x in inputs:
        for n in thread_counts:
            with threads(n):
                row = {"batch": b, "threads": n}
                ms = time_interleaved({k: (lambda m=m: m(x)) for k, m in variants.items()}, repeats, warmup)
                row.update({f"{k}_ms": v for k, v in ms.items()})
                row["speedup"] = row[f"{base}_ms"] / row["packed_ms"]
                if layers is not None:
                    row["layers"] = layers(x)
                if log:
                    log(f"  batch {b:3d}  threads {n}: {base} {row[f'{base}_ms']:9.3f} ms  packed "
                        f"{row['packed_ms']:9.3f} ms  x{row['speedup']:.2f}")
                runs.append(row)
    return runs


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules (binary, packed and int8 layers count as leaves, and so do fused units: their conv,
    BatchNorm, shortcut add and activation run as one engine call, and hooks on their children would
    unfuse them), nn.Identity left out."""
    out = []
    leaves = (BinaryLayer, _Packed, _Int8, _fused_unit())

    def visit(name, m):
        if isinstance(m, leaves) or not list(m.children()):
            if type(m) is not nn.Identity:
                out.append((name, m))
            return
        for n, c in m.named_children():
            visit(f"{name}.{n}" if name else n, c)

    visit("", model)
    return out


def time_layers(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> dict:
    """{leaf name: (type, median ms)} over ``repeats`` hooked forward passes (a leaf called twice
    sums), and ``""``: ("total", median ms of those whole passes)."""
    units = [u for u in _units(model) if u[0]] + [("", model)]
    runs: list[dict] = []
    start: dict = {}
    hooks = []
    for name, m in units:
        hooks.append(m.register_forward_pre_hook(lambda mod, inp, n=name: start.__setitem__(n, time.perf_counter())))
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, n=name: runs[-1].__setitem__(n, runs[-1].get(n, 0.0) + time.perf_counter() - start[n])))
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                runs.append({})
                model(x)
    finally:
        for h in hooks:
            h.remove()
    runs = runs[warmup:]
    out = {name: (type(m).__name__, 1e3 * statistics.median(r.get(name, 0.0) for r in runs)) for name, m in units
           if any(name in r for r in runs)}
    out[""] = ("total", out[""][1])
    return out


# --- models -----------------------------------------------------------------------------------

def fp_twin(name: Optional[str]) -> Optional[str]:
    """The registry's real-valued twin of ``name`` if there is one: fp_<rest>, <name>_fp, <rest> or
    <rest>_fp, where <rest> is the name without its method prefix (bireal_resnet18 -> resnet18)."""
    from ..models.registry import _MODELS
    if not name:
        return None
    rest = name.split("_", 1)[1] if "_" in name else None
    for cand in (f"fp_{rest}" if rest else None, f"{name}_fp", rest, f"{rest}_fp" if rest else None):
        if cand and cand != name and cand in _MODELS:
            return cand
    return None


def resolve(spec: str, fold_bn: bool = True):
    """(float model, packed model, registry name, config, input size or None) for a registry name,
    zoo:NAME, checkpoint or packed file (the float model of a packed file has random weights); the
    model is packed with ``fold_bn`` (a packed file as it was saved)."""
    from pathlib import Path
    from ..binarize import set_progress
    from ..models import create_model
    from .file import load_with_meta, sniff
    if not spec.startswith("zoo:") and (Path(spec).is_file() and sniff(spec) == "packed"
                                        or Path(spec).suffix in (".safetensors", ".onebit")):
        packed, info = load_with_meta(spec)
        model = create_model(info["model"], **info["model_kwargs"])
        set_progress(model, info["progress"])
        size = info.get("input_size")
        return model.eval(), packed, info["model"], info["model_kwargs"], tuple(size) if size else None
    if spec.startswith("zoo:") or Path(spec).suffix in (".pt", ".pth") or Path(spec).is_file():
        if spec.startswith("zoo:"):
            from .. import zoo
            model, meta = zoo.load_with_meta(spec[4:])
        else:
            from ..train.checkpoint import load_model
            model, meta = load_model(spec)
        name, config, size = meta["model"], meta.get("model_kwargs", {}), tuple(meta["input_size"])
    else:
        model, name, config, size = create_model(spec).eval(), spec, {}, None
    return model, pack(model.eval(), fold_bn=fold_bn), name, config, size


def bench_model(spec, batches: Sequence[int] = (1, 32), thread_counts: Sequence[int] = (1, 2),
                input_size: Optional[tuple] = None, repeats: int = 5, warmup: int = 1, per_layer: bool = True,
                twin: bool = True, log=None, fold_bn: bool = True) -> dict:
    """End-to-end and per-layer latency of packed vs float32 (and the fp twin); see the module doc."""
    from ..models import create_model
    from ..train.loop import git_commit, machine_info
    model, packed, name, config, size = resolve(spec, fold_bn) if isinstance(spec, str) else spec
    size = tuple(input_size or size or default_input_size(model))
    variants = {"float32": model.eval(), "packed": packed.eval()}
    tw = fp_twin(name) if twin else None
    twin_kwargs = None
    if tw:
        # the binary model's options, or (binarizers, scales: nothing a real twin takes) its class count only
        for kw in (config, {k: v for k, v in config.items() if k == "num_classes"}):
            try:
                variants[tw], twin_kwargs = create_model(tw, **kw).eval(), kw
                break
            except (TypeError, ValueError):
                continue
        if twin_kwargs is None:
            tw = None
    inputs = [(b, torch.randn(b, *size, generator=torch.Generator().manual_seed(0))) for b in batches]
    layers = (lambda x: {label: time_layers(variants[label], x, repeats, min(warmup, 1))
                         for label in ("float32", "packed")}) if per_layer else None
    runs = _time_grid(variants, inputs, thread_counts, repeats, warmup, "float32", layers, log)
    return {"kind": "model", "model": name, "model_kwargs": config, "spec": spec if isinstance(spec, str) else name,
            "input_size": list(size), "twin": tw, "twin_kwargs": twin_kwargs, "repeats": repeats, "warmup": warmup, "fold_bn": fold_bn,
            "engine_path": engine.path_in_use(), "engine_threads": engine.thread_backend(), "machine": machine_info(),
            "commit": git_commit(), "runs": runs}


def default_input_size(model: nn.Module) -> tuple:
    """(C, H, W) the model takes: C from its first convolution (3 without one), H and W 32 for a
    CIFAR-stem ResNet, else its ``default_input_size`` or 224."""
    from ..models.resnet import ResNet
    if getattr(model, "default_input_size", None):
        return tuple(model.default_input_size)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    c = first.in_channels if first is not None else 3
    stem = getattr(model, "stem", None)
    if isinstance(model, ResNet) and stem is not None and stem[0].kernel_size == (3, 3):
        return (c, 32, 32)
    return (c, 224, 224)


def quick_speedup(model: nn.Module, packed: nn.Module, input_size: tuple, seconds: float = 2.0) -> dict:
    """Batch-1 median latency of float32 vs packed within about ``seconds`` (for the demo)."""
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = time.perf_counter()
        model(x), packed(x)
        one = max(time.perf_counter() - t, 1e-4)
    repeats = int(max(3, min(200, seconds / one)))
    ms = time_interleaved({"float32": lambda: model(x), "packed": lambda: packed(x)}, repeats, 1)
    return {"float32_ms": ms["float32"], "packed_ms": ms["packed"], "speedup": ms["float32"] / ms["packed"],
            "repeats": repeats, "threads": torch.get_num_threads()}


# --- one layer --------------------------------------------------------------------------------

def _parse_ints(text, n_min: int, n_max: int, what: str) -> tuple:
    try:
        v = tuple(int(s) for s in text.split(",")) if isinstance(text, str) else tuple(int(s) for s in text)
    except ValueError:
        v = ()
    if not n_min <= len(v) <= n_max or min(v) < 1:
        raise ValueError(f"--shape for {what} must be {'C_IN,C_OUT,H,W[,K,STRIDE]' if what == 'conv' else 'M,K,N'} "
                         f"(positive integers), got {text!r}")
    return v


def bench_layer(kind: str, shape, batches: Sequence[int] = (1, 32), thread_counts: Sequence[int] = (1, 2),
                repeats: int = 20, warmup: int = 3, log=None) -> dict:
    """A packed binary conv / linear against nn.Conv2d / nn.Linear float32 (and the unpacked
    binary layer).  conv shape: C_IN,C_OUT,H,W[,K,STRIDE] (K 3, stride 1 by default, padding K//2),
    timed at each batch; linear shape: M,K,N (M rows, so ``batches`` is not used)."""
    from ..train.loop import git_commit, machine_info
    torch.manual_seed(0)
    if kind == "conv":
        dims = _parse_ints(shape, 4, 6, "conv")
        cin, cout, h, w, k, s = dims + (3, 1)[len(dims) - 4:]
        fp = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        binary = BinaryConv2d(cin, cout, k, s, k // 2, bias=False)
        inputs = [(b, (b, cin, h, w)) for b in batches]
        label = f"conv {cin}->{cout} {h}x{w} k{k} s{s}"
    elif kind == "linear":
        m_, k_, n_ = _parse_ints(shape, 3, 3, "linear")
        fp = nn.Linear(k_, n_, bias=False)
        binary = BinaryLinear(k_, n_, bias=False)
        inputs = [(m_, (m_, k_))]
        label = f"linear {m_}x{k_} @ {k_}x{n_}"
    else:
        raise ValueError(f"--layer must be conv or linear, got {kind!r}")
    binary.eval()
    variants = {"fp32": fp.eval(), "binary_float32": binary, "packed": pack(nn.Sequential(binary).eval())[0]}
    inputs = [(b, torch.randn(*xs, generator=torch.Generator().manual_seed(1))) for b, xs in inputs]
    runs = _time_grid(variants, inputs, thread_counts, repeats, warmup, "fp32", None, log)
    return {"kind": "layer", "layer": kind, "shape": list(_parse_ints(shape, 3, 6, kind)), "label": label,
            "repeats": repeats, "warmup": warmup, "engine_path": engine.path_in_use(),
            "engine_threads": engine.thread_backend(), "machine": machine_info(),
            "commit": git_commit(), "runs": runs}


# --- reports ----------------------------------------------------------------------------------

def _table(head: list, rows: list) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [head] + [[str(c) for c in r] for r in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(r, width))) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in width) + "|"] + [line(r) for r in cells[1:]])


def format_result(res: dict, layer_rows: Optional[int] = None) -> str:
    """The result as Markdown: the end-to-end table, then per-layer tables."""
    m = res["machine"]
    where = f"{m['cpu']}, engine path {res['engine_path']}, median of {res['repeats']} after {res['warmup']} warm-up"
    if res["kind"] == "layer":
        rows = [[r["batch"], r["threads"], f"{r['fp32_ms']:.3f}", f"{r['binary_float32_ms']:.3f}",
                 f"{r['packed_ms']:.3f}", f"{r['speedup']:.2f}x"] for r in res["runs"]]
        return (f"### {res['label']}\n\n{where}\n\n"
                + _table(["batch", "threads", "nn fp32 ms", "binary float32 ms", "packed ms", "speed-up"], rows))
    tw = res.get("twin")
    head = ["batch", "threads", "float32 ms", "packed ms", "speed-up"] + ([f"{tw} (fp) ms"] if tw else [])
    rows = [[r["batch"], r["threads"], f"{r['float32_ms']:.2f}", f"{r['packed_ms']:.2f}", f"{r['speedup']:.2f}x"]
            + ([f"{r[tw + '_ms']:.2f}"] if tw else []) for r in res["runs"]]
    out = [f"### {res['model']} at {'x'.join(map(str, res['input_size']))}", "", where, "", _table(head, rows)]
    for r in res["runs"]:
        if "layers" not in r:
            continue
        fl, pk = dict(r["layers"]["float32"]), dict(r["layers"]["packed"])
        total_f, total_p = fl.pop("")[1], pk.pop("")[1]
        names = [n for n in fl if n in pk] + [n for n in pk if n not in fl]
        lines = []
        for n in names:
            f, p = fl.get(n, (None, 0.0)), pk.get(n, (None, 0.0))
            speed = f"{f[1] / p[1]:.2f}x" if n in fl and n in pk and p[1] > 0 else ""
            lines.append([n, p[0] or f[0], f"{f[1]:.3f}" if n in fl else "-", f"{p[1]:.3f}" if n in pk else "-", speed])
        if layer_rows is not None:  # the slowest float32 layers
            lines = sorted(lines, key=lambda l: -float(l[2]) if l[2] != "-" else 0.0)[:layer_rows]
        other_f, other_p = total_f - sum(v[1] for v in fl.values()), total_p - sum(v[1] for v in pk.values())
        lines.append(["other (outside leaf modules)", "", f"{other_f:.3f}", f"{other_p:.3f}", ""])
        lines.append(["whole hooked pass", "", f"{total_f:.3f}", f"{total_p:.3f}",
                      f"{total_f / total_p:.2f}x" if total_p > 0 else ""])
        out += ["", f"per layer, batch {r['batch']}, {r['threads']} thread(s):", "",
                _table(["layer", "type (packed)", "float32 ms", "packed ms", "speed-up"], lines)]
    return "\n".join(out)


def write_result(res: dict, out) -> tuple:
    """Write ``res`` as JSON at ``out`` and as Markdown next to it (.md); returns both paths."""
    import json
    from pathlib import Path
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(f"# onebit bench\n\ncommit {res['commit']}, torch {res['machine']['torch']}\n\n"
                  + format_result(res) + "\n")
    return out, md
