"""ResNets for CIFAR and ImageNet: full precision (teachers), Bi-Real style and ReActNet style.

One skeleton, :class:`ResNet` (stem -> stages of blocks -> pool -> classifier), takes the
block as an argument, so later families (ES-BNN, BNext) bring their own block or conv
and reuse everything else.

Binary styles (every 3x3 conv inside the blocks is binary; stem and classifier real by
default, ``binary_stem`` / ``binary_head`` make them binary):

- ``bireal``:   ApproxSign activations, clipped-STE weights with XNOR per-channel scale,
  a real shortcut around every binary conv (Bi-Real Net, Liu et al. 2018).
- ``reactnet``: RSign (learnable thresholds, ApproxSign backward) and RPReLU after every
  residual addition (ReActNet, Liu et al. 2020; its ResNet-based variant).

Down-sampling shortcut: ``avgpool_conv`` (2x2 average pool + real 1x1 conv + BN; Bi-Real,
ImageNet default) or ``zeropad`` (option A; IR-Net / ES-BNN ResNet-20, the CIFAR ResNet-20
default).  Any factory accepts ``input_binarizer``, ``weight_binarizer``, ``scale``,
``center``, ``scale_grad``, ``act``, ``pre_bn_act`` (e.g. ``"relu"``: the ReSTE authors'
conv -> ReLU -> BN branches), ``shortcut``, ``num_classes``, ``head_bn``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from ..layers.binary import BinaryConv2d, BinaryLinear
from .blocks import BasicBlock, BinaryBasicBlock
from .registry import register_model

BINARY_KEYS = ("input_binarizer", "weight_binarizer", "scale", "center", "scale_grad")

STYLES = {
    "bireal": dict(input_binarizer="approx_sign", weight_binarizer="clipped_ste", scale="channel",
                   act="identity"),
    "reactnet": dict(input_binarizer={"name": "rsign", "estimator": "approx_sign"},
                     weight_binarizer="clipped_ste", scale="channel", act="rprelu"),
}


class ResNet(nn.Module):
    """stem -> stages -> global average pool -> [BN1d] -> classifier.

    ``block(in_ch, out_ch, stride, **block_kwargs)`` builds one block; stage i has
    ``depths[i]`` blocks of width ``widths[i]``, the first one with stride 2 (except stage 0).
    ``stem``: ``"cifar"`` (3x3 conv, stride 1) or ``"imagenet"`` (7x7 stride 2 + 3x3 max-pool).
    ``binary``: the binary layers' options, given to the blocks and to a binary stem/head.
    """

    def __init__(self, block: Callable[..., nn.Module], depths: Sequence[int], widths: Sequence[int],
                 num_classes: int = 10, stem: str = "cifar", in_chans: int = 3, stem_act: bool = True,
                 binary_stem: bool = False, binary_head: bool = False, head_bn: bool = False,
                 binary: dict | None = None, **block_kwargs):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown stem {stem!r}; allowed: cifar, imagenet")
        if len(depths) != len(widths):
            raise ValueError(f"depths {list(depths)} and widths {list(widths)} must have the same length")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if binary is not None:
            block_kwargs["binary"] = binary
        binary = dict(binary or {})
        w0 = widths[0]
        k, s, p = (3, 1, 1) if stem == "cifar" else (7, 2, 3)
        if binary_stem:  # binary weights only: the input image stays real
            conv = BinaryConv2d(in_chans, w0, k, s, p, bias=False,
                                **{**binary, "input_binarizer": None})
        else:
            conv = nn.Conv2d(in_chans, w0, k, s, p, bias=False)
        layers = [conv, nn.BatchNorm2d(w0)]
        if stem_act:
            layers.append(nn.ReLU(inplace=True))
        if stem == "imagenet":
            layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*layers)

        stages, in_ch = [], w0
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, width, stride, **block_kwargs))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_bn = nn.BatchNorm1d(in_ch) if head_bn else nn.Identity()
        if binary_head:
            self.fc = BinaryLinear(in_ch, num_classes, **binary)
        else:
            self.fc = nn.Linear(in_ch, num_classes)
        self.num_features, self.num_classes = in_ch, num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after global pooling), for analysis."""
        if x.dim() != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
        return self.head_bn(torch.flatten(self.pool(self.stages(self.stem(x))), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


CIFAR20 = dict(depths=(3, 3, 3), widths=(16, 32, 64), stem="cifar")
CIFAR18 = dict(depths=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem="cifar")
IMAGENET18 = dict(depths=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem="imagenet")
IMAGENET34 = dict(depths=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem="imagenet")


def fp_resnet(layout: dict, shortcut: str, num_classes: int, **kwargs) -> ResNet:
    return ResNet(BasicBlock, num_classes=num_classes, shortcut=shortcut, **layout, **kwargs)


def binary_resnet(style: str, layout: dict, shortcut: str, num_classes: int,
                  block: Callable[..., nn.Module] = BinaryBasicBlock, **kwargs) -> ResNet:
    """A binary ResNet of ``style`` ('bireal' or 'reactnet'); kwargs override the style."""
    cfg = {**STYLES[style], "shortcut": shortcut, "stem_act": False, **kwargs}
    binary = {k: cfg.pop(k) for k in BINARY_KEYS if k in cfg}
    return ResNet(block, num_classes=num_classes, binary=binary, **layout, **cfg)


# --- registry -----------------------------------------------------------------------------

def _register_family(depth_name: str, layout: dict, fp_shortcut: str, bin_shortcut: str, classes: int):
    def fp(num_classes: int = classes, **kw):
        return fp_resnet(layout, kw.pop("shortcut", fp_shortcut), num_classes, **kw)

    def bireal(num_classes: int = classes, **kw):
        return binary_resnet("bireal", layout, kw.pop("shortcut", bin_shortcut), num_classes, **kw)

    def reactnet(num_classes: int = classes, **kw):
        return binary_resnet("reactnet", layout, kw.pop("shortcut", bin_shortcut), num_classes, **kw)

    for prefix, fn, what in (("", fp, "full-precision"), ("bireal_", bireal, "Bi-Real binary"),
                             ("reactnet_", reactnet, "ReActNet binary")):
        fn.__name__ = prefix + depth_name
        fn.__doc__ = f"{what} {depth_name} ({', '.join(f'{k}={v}' for k, v in layout.items())})."
        register_model(fn)


_register_family("resnet20", CIFAR20, "zeropad", "zeropad", 10)
_register_family("resnet18_cifar", CIFAR18, "conv", "avgpool_conv", 10)
_register_family("resnet18", IMAGENET18, "conv", "avgpool_conv", 1000)
_register_family("resnet34", IMAGENET34, "conv", "avgpool_conv", 1000)
