"""Parameters, memory as deployed, MACs, FLOPs, BOPs, OPs and OPs+ of a model.

    report = complexity(model, input_size=(3, 224, 224))
    print(report.table())
    report.total["ops"]

Conventions (docs/complexity.md; reference.md section 6):

- one multiply-add is one MAC; a MAC is a BOP when both operands are binary (a BinaryLayer
  with binary weights AND binary inputs), otherwise a FLOP ("FLOPs" in these papers count
  one multiply-add as one FLOP);
- conv MACs = output elements * (in_channels / groups) * kh * kw; linear MACs = output
  elements * in_features;
- OPs = BOPs / 64 + FLOPs (Bi-Real, ReActNet; 000 Table 4, 004 Table 2);
- OPs+ = OPs + normalisation FLOPs, one FLOP per BatchNorm output element (002 Table 6);
- pooling, activations, additions, biases: 0;
- parameters: a BinaryLayer's ``weight`` is binary when its ``binary_weights`` is True, every
  other parameter is real; memory as deployed = 1 bit per binary weight + the dtype's bits
  per real parameter (buffers such as BN running statistics are not counted).

Counters are looked up by module type (through the MRO) in ``COUNTERS``; add one with
:func:`register_counter` or pass ``counters={type: fn}`` for a single call.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn

from ..binarize.react import LearnableBias, RPReLU, RSign
from ..layers.binary import BinaryLayer

COUNT_KEYS = ("flops", "bops", "bn_flops")
LAYER_KEYS = ("params_binary", "params_real", "memory_bits", "macs", "flops", "bops", "bn_flops")
BOPS_PER_OP = 64  # OPs = BOPs / 64 + FLOPs


class Counter(NamedTuple):
    """``fn(module, inputs, output) -> {"flops": n, "bops": n, "bn_flops": n}`` (keys optional).

    ``container=False``: the module is one row that owns everything below it (its children are
    not visited; their parameters are counted on this row).  ``container=True``: the counter
    counts only the module's own compute (e.g. the attention products Q K^T and P V of a
    module whose projections are child layers); the children are visited as usual.
    """
    fn: Callable[[nn.Module, tuple, object], dict]
    container: bool = False


COUNTERS: dict[type, Counter] = {}


def register_counter(*types: type, container: bool = False):
    """Decorator: ``@register_counter(MyLayer)`` on ``fn(module, inputs, output) -> dict``."""
    def deco(fn):
        for t in types:
            COUNTERS[t] = Counter(fn, container)
        return fn
    return deco


def is_binary_op(m: nn.Module) -> bool:
    """Both operands binary: the layer's MACs are BOPs (XNOR-popcount)."""
    return isinstance(m, BinaryLayer) and m.binary_weights and m.binary_inputs


def split_macs(m: nn.Module, macs: int) -> dict:
    """MACs of a weight layer as BOPs (binary weights and inputs) or FLOPs (anything else)."""
    return {"bops": macs} if is_binary_op(m) else {"flops": macs}


@register_counter(nn.modules.conv._ConvNd)
def count_conv(m, inputs, out) -> dict:
    # out elements * (in_channels / groups) * prod(kernel); weight is (out, in / groups, *kernel)
    return split_macs(m, out.numel() * m.weight[0].numel())


@register_counter(nn.Linear)
def count_linear(m, inputs, out) -> dict:
    return split_macs(m, out.numel() * m.in_features)


@register_counter(nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
def count_norm(m, inputs, out) -> dict:
    # 002 Table 6: one FLOP per BN output element, counted in OPs+ only.
    return {"bn_flops": out.numel()}


@register_counter(nn.PReLU, RPReLU, LearnableBias, RSign)
def count_zero(m, inputs, out) -> dict:
    """Known layers with parameters but no counted compute (activations, shifts)."""
    return {}


def per_element_flops(m, inputs, out) -> dict:
    """Optional convention: one FLOP per output element (BinaryViT's pooling branches and
    LayerScale, to reproduce 000 Table 4's FLOPs; reference.md section 6)."""
    return {"flops": out.numel()}


def find_counter(m: nn.Module, counters: dict) -> Optional[Counter]:
    for cls in type(m).__mro__:
        if cls in counters:
            c = counters[cls]
            return c if isinstance(c, Counter) else Counter(c)
    return None


@dataclass
class Report:
    """``layers``: one dict per row (name, type, LAYER_KEYS, output_shape); ``total``: the sums
    plus params, ops, ops_plus, memory_bytes, compression."""
    layers: list
    total: dict

    def to_dict(self) -> dict:
        return json.loads(json.dumps({"layers": self.layers, "total": self.total}))

    def table(self, hide_empty: bool = False) -> str:
        """Aligned per-layer table with totals; ``hide_empty`` drops rows without parameters
        or operations (Identity, ReLU, pooling)."""
        cols = ("name", "type", "output_shape", "params_binary", "params_real", "memory_bits",
                "bops", "flops", "bn_flops")
        rows = [[r["name"] or "(model)", r["type"],
                 "-" if r["output_shape"] is None else "x".join(map(str, r["output_shape"][1:])),
                 *(f"{r[k]:,}" for k in cols[3:])] for r in self.layers
                if not hide_empty or any(r[k] for k in LAYER_KEYS)]
        t = self.total
        rows.append(["total", "", "", *(f"{t[k]:,}" for k in cols[3:])])
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        rule = "-" * len(line(cols))
        out = [line(cols), rule, *map(line, rows[:-1]), rule, line(rows[-1]), rule]
        out += [f"params: {t['params']:,} ({t['params_binary']:,} binary, {t['params_real']:,} real)",
                f"memory: {t['memory_bytes'] / 1e6:.2f} MB deployed "
                f"(compression {t['compression']:.2f}x vs float32)",
                f"BOPs {t['bops']:.4e}  FLOPs {t['flops']:.4e}  OPs {t['ops']:.4e}  "
                f"BN FLOPs {t['bn_flops']:.4e}  OPs+ {t['ops_plus']:.4e}"]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _rows(model: nn.Module, counters: dict) -> list:
    """(name, module, counter, params) for every row: units (a counted module, or a leaf) own
    their subtree's parameters; containers own only their direct parameters."""
    rows = []

    def visit(name, m):
        c = find_counter(m, counters)
        children = list(m.named_children())
        if (c is not None and not c.container) or not children:
            rows.append((name, m, c, list(m.parameters())))
            return
        own = list(m.parameters(recurse=False))
        if c is not None or own:
            rows.append((name, m, c, own))
        for n, child in children:
            visit(f"{name}.{n}" if name else n, child)

    visit("", model)
    return rows


def complexity(model: nn.Module, input_size=(3, 224, 224), bn_flops: bool = True,
               counters: Optional[dict] = None) -> Report:
    """Count parameters, memory and operations with one batch-1 forward pass (eval, no_grad).

    ``input_size``: one sample's shape (no batch dimension).  ``bn_flops=False`` leaves
    normalisation out (bn_flops 0, OPs+ = OPs).  ``counters``: ``{module type: fn or
    Counter}`` merged over :data:`COUNTERS` for this call (e.g. ``{nn.AvgPool2d:
    per_element_flops}``).  A module with parameters of its own and no counter (an unknown leaf,
    or a container holding parameters directly) is warned about and its parameters counted as
    real; parameter-free unknown leaves (ReLU, pooling, Identity...) count 0 silently.
    """
    table = {**COUNTERS, **(counters or {})}
    binary_ids = {id(m.weight) for m in model.modules() if isinstance(m, BinaryLayer) and m.binary_weights}
    rows, seen, hooks = [], set(), []
    for name, m, c, params in _rows(model, table):
        params = [p for p in params if id(p) not in seen]  # tied parameters count once
        seen.update(id(p) for p in params)
        nb = sum(p.numel() for p in params if id(p) in binary_ids)
        nr = sum(p.numel() for p in params if id(p) not in binary_ids)
        bits = nb + sum(p.numel() * p.element_size() * 8 for p in params if id(p) not in binary_ids)
        if c is None and params:
            warnings.warn(f"complexity: no counter for {type(m).__qualname__} ({name or 'model'}); "
                          f"its {nr + nb:,} parameters are counted as real and its operations as 0. "
                          f"Register one with onebit.analysis.register_counter.", stacklevel=2)
        row = dict(name=name, type=type(m).__name__, params_binary=nb, params_real=nr, memory_bits=bits,
                   macs=0, flops=0, bops=0, bn_flops=0, output_shape=None)
        rows.append(row)
        hooks.append(m.register_forward_hook(_hook(None if c is None else c.fn, row)))

    p = next(model.parameters(), None)
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype if p.is_floating_point() else x.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    for row in rows:
        if not bn_flops:
            row["bn_flops"] = 0
        row["macs"] = row["flops"] + row["bops"]
    total = {k: sum(r[k] for r in rows) for k in LAYER_KEYS}
    total["params"] = total["params_binary"] + total["params_real"]
    total["ops"] = total["bops"] / BOPS_PER_OP + total["flops"]
    total["ops_plus"] = total["ops"] + total["bn_flops"]
    total["memory_bytes"] = total["memory_bits"] / 8
    total["compression"] = 32 * total["params"] / total["memory_bits"] if total["memory_bits"] else 1.0
    return Report(rows, total)


def _hook(fn, row):
    def hook(m, inputs, out):
        counts = {} if fn is None else (fn(m, inputs, out) or {})
        unknown = set(counts) - set(COUNT_KEYS)
        if unknown:
            raise ValueError(f"counter for {type(m).__name__} returned unknown keys {sorted(unknown)}; "
                             f"allowed: {', '.join(COUNT_KEYS)}")
        for k, v in counts.items():
            row[k] += int(v)  # a module called twice counts twice
        if isinstance(out, torch.Tensor):
            row["output_shape"] = list(out.shape)
    return hook
