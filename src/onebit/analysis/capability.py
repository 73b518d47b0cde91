"""Element-wise representational capability (000 Appendix B, after Bi-Real Net).

The number of distinct absolute values one element of the classifier's input can take,
followed through the network by three rules (000 Sec. 3, Appendix B):

- first layer, taken as binary-weighted on ``first_layer_bits``-bit pixels: K*K*C*(2^b - 1)
  values, zero-centred to half (integer division; 7x7x3: 37,485 -> 18,742);
- each binary layer adds D_in * K^2 (normalisation, max-pooling, activations: no change);
- an average pool aggregating k*k neighbours (the 2x2 stride-2 pool of a stage transition)
  multiplies by k*k = 4; global average pooling over an h x w map multiplies by h*w.

``capability(model)`` dispatches on the model's class through ``CAPABILITY_RULES``; the
ResNet rule is registered here, other families add theirs with :func:`register_capability`.
:func:`deit_capability` is the binary DeiT-S arithmetic of Appendix B.1 as a pure function.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..layers.binary import BinaryLayer
from ..models.resnet import ResNet

CAPABILITY_RULES: dict[type, Callable[..., dict]] = {}


def register_capability(*types: type):
    """Decorator: ``@register_capability(MyNet)`` on ``rule(model, input_size, **options) -> dict``."""
    def deco(fn):
        for t in types:
            CAPABILITY_RULES[t] = fn
        return fn
    return deco


def capability(model: nn.Module, input_size=None, omit_attention: bool = False, first_layer_bits: int = 8) -> dict:
    """``{"total": int, "per_layer": [{name, op, contribution | factor, value_after}, ...]}``.

    ``input_size``: one sample's shape; None picks the model family's default (ResNet:
    3x224x224 with an ImageNet stem, 3x32x32 with a CIFAR stem).  ``omit_attention`` is for
    ViT rules (the paper's printed DeiT-S total leaves out the P V term); ResNet ignores it.
    Raises ValueError for a model without binary blocks, TypeError for a family without a rule.
    """
    for cls in type(model).__mro__:
        if cls in CAPABILITY_RULES:
            return CAPABILITY_RULES[cls](model, input_size, omit_attention=omit_attention,
                                         first_layer_bits=first_layer_bits)
    raise TypeError(f"no representational-capability rule for {type(model).__name__}; "
                    f"known: {', '.join(t.__name__ for t in CAPABILITY_RULES)} "
                    f"(add one with onebit.analysis.register_capability)")


def first_layer_values(k_h: int, k_w: int, in_chans: int, bits: int = 8) -> int:
    # App. B: K*K*C*max(x) values in [0, 37,485]; zero mean -> [-18,742, 18,742]
    return k_h * k_w * in_chans * (2 ** bits - 1) // 2


class _Trace:
    """The running value and the per-layer list."""

    def __init__(self):
        self.value, self.per_layer = 0, []

    def first(self, name: str, value: int):
        self.value = value
        self.per_layer.append(dict(name=name, op="first_layer", contribution=value, value_after=value))

    def add(self, name: str, contribution: int):
        self.value += contribution
        self.per_layer.append(dict(name=name, op="add", contribution=contribution, value_after=self.value))

    def multiply(self, name: str, factor: int):
        self.value *= factor
        self.per_layer.append(dict(name=name, op="multiply", factor=factor, value_after=self.value))

    def result(self, **extra) -> dict:
        return dict(total=self.value, per_layer=self.per_layer, **extra)


def _binary_convs(module: nn.Module) -> list:
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, BinaryLayer) and m.binary_weights and m.binary_inputs]


def _pool_area(block: nn.Module) -> int:
    """k*k of the average pool in a down-sampling block's shortcut (1 without one: a strided
    subsampling or a strided 1x1 conv aggregates no neighbours)."""
    for m in block.modules():
        if isinstance(m, nn.AvgPool2d):
            k = m.kernel_size
            kh, kw = (k, k) if isinstance(k, int) else k
            return kh * kw
    return 1


@register_capability(ResNet)
def resnet_capability(model: ResNet, input_size=None, first_layer_bits: int = 8, **_) -> dict:
    """App. B.2 for every ResNet: stem -> per stage [x pool area at a stride-2 transition,
    + D_in*K^2 of ONE binary 3x3 layer per block] -> x h*w of the last feature map.

    Like the appendix (ResNet-34: 576*3, 1152*4, 2304*6, 4608*3), each basic block adds one
    binary 3x3 layer, its last one (D_in = the stage width), although a Bi-Real block has two.
    """
    stem_conv = next(m for m in model.stem.modules() if isinstance(m, nn.Conv2d))
    if input_size is None:
        imagenet = any(isinstance(m, nn.MaxPool2d) for m in model.stem.modules())
        input_size = (stem_conv.in_channels, 224, 224) if imagenet else (stem_conv.in_channels, 32, 32)
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            if not _binary_convs(block):
                raise ValueError(f"representational capability needs binary blocks (binary weights and "
                                 f"inputs); block stages.{i}.{j} ({type(block).__name__}) has none: "
                                 f"the rule is undefined for a full-precision model")

    # spatial size of the last stage's output, for the global average pool
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            last = model.stages(model.stem(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype)))
    finally:
        model.train(was_training)
    h, w = last.shape[-2:]

    t = _Trace()
    kh, kw = stem_conv.kernel_size
    t.first("stem", first_layer_values(kh, kw, stem_conv.in_channels // stem_conv.groups, first_layer_bits))
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            name = f"stages.{i}.{j}"
            convs = _binary_convs(block)
            if j == 0 and i > 0 and convs[0][1].stride != (1, 1):
                t.multiply(f"{name} (transition)", _pool_area(block))  # 2x2 stride-2 avg pool: x4
            cname, conv = convs[-1]
            t.add(f"{name}.{cname}", conv.weight[0].numel())  # D_in * K^2 (per group)
    t.multiply("pool (global average)", h * w)  # 7 x 7 at 224: x49
    return t.result(input_size=list(input_size))


def deit_capability(embed_dim: int = 384, depth: int = 12, tokens: int = 196, mlp_ratio: int = 4,
                    patch: int = 16, in_chans: int = 3, omit_attention: bool = False,
                    first_layer_bits: int = 8) -> dict:
    """App. B.1, binary DeiT-S with a cls token (no global pool), the formula as printed:
    (D*4 + N + 4*D*2) * depth + first = (384*4 + 196 + 4*384*2)*12 + 97,920 = 155,568.

    Per block: q, k, v and the projection add D each; P V adds N (tokens); each of the two FFN
    layers adds mlp_ratio*D (the paper's 4*D for both, as printed).  The paper's stated total,
    153,216, equals the formula without the N term: ``omit_attention=True`` reproduces it.
    """
    t = _Trace()
    t.first("patch_embed", first_layer_values(patch, patch, in_chans, first_layer_bits))  # 97,920
    for b in range(depth):
        for proj in ("q", "k", "v", "proj"):
            t.add(f"blocks.{b}.attn.{proj}", embed_dim)
        if not omit_attention:
            t.add(f"blocks.{b}.attn.pv", tokens)
        for fc in ("fc1", "fc2"):
            t.add(f"blocks.{b}.mlp.{fc}", mlp_ratio * embed_dim)
    return t.result()


def _vit_rule(model, input_size=None, omit_attention: bool = False, first_layer_bits: int = 8, **_) -> dict:
    """BinaryViT models: the DeiT-S rule of App. B.1 applied stage by stage (Sec. 3.4).

    Per block of width C: q, k, v and the projection add C each, P V adds M (the key tokens:
    N, or N / R^2 under Bi-SR-MHA), each FFN layer adds mlp_ratio * C (as the printed
    formula); a 2x2 patch merge multiplies by 4; global average pooling multiplies by the
    final token count (Sec. 3.4: a 64-wide stage-1 FC contributes 64 * 4 * 4 * 4 * 49).
    The cls-token DeiT-S gives 155,568, or 153,216 with ``omit_attention`` (the paper's total).
    """
    from ..models.binaryvit import BinaryViT
    assert isinstance(model, BinaryViT)
    if not any(isinstance(m, BinaryLayer) and m.binary_inputs for m in model.modules()):
        raise ValueError("representational capability follows binary layers; this model has none")
    k = model.patch_embed.kernel_size
    t = _Trace()
    t.first("patch_embed", first_layer_values(k[0], k[1], model.patch_embed.in_channels, first_layer_bits))
    grid = model.grid0
    for i, blocks in enumerate(model.stages):
        if i > 0:
            grid = (grid[0] // 2, grid[1] // 2)
            t.multiply(f"merges.{i - 1}", 4)
        for b, blk in enumerate(blocks):
            c, r = blk.attn.dim, blk.attn.sr_ratio
            for proj in ("q", "k", "v", "proj"):
                t.add(f"stages.{i}.{b}.attn.{proj}", c)
            if not omit_attention:
                t.add(f"stages.{i}.{b}.attn.pv", (grid[0] // r) * (grid[1] // r))
            for j, fc in enumerate(blk.ffn):
                t.add(f"stages.{i}.{b}.ffn.{j}", blk.ffn[0].linear.out_features)
    if model.pool == "gap":
        t.multiply("pool (global average)", grid[0] * grid[1])
    return t.result(input_size=list(model.default_input_size))


def _register_vit():
    from ..models.binaryvit import BinaryViT
    register_capability(BinaryViT)(_vit_rule)


_register_vit()
