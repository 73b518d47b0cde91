"""Residual building blocks shared by every convolutional family.

- :class:`Shortcut`: identity, option A (zero-padded channels, IR-Net / ES-BNN ResNet-20),
  option B (real 1x1 conv + BN) or Bi-Real's down-sampling (2x2 average pool + real 1x1
  conv + BN).
- :class:`BinaryUnit`: one binary conv with its own real-valued shortcut (Bi-Real Net):
  y = act(BN(pre_bn_act(BinaryConv(x))) + shortcut(x)).  ``act`` is identity (Bi-Real),
  hardtanh (IR-Net) or RPReLU (ReActNet); ``pre_bn_act`` is identity except in the ReSTE
  authors' ResNet-20s, whose branches are conv -> ReLU -> BN; ``conv_layer`` lets other
  families (ES-BNN's expand-and-shrink conv) swap the conv without copying the unit.
- :class:`BinaryBasicBlock`: two BinaryUnits (a ResNet basic block, Bi-Real style).
- :class:`BasicBlock`: the full-precision He et al. basic block (teachers).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..binarize.react import RPReLU
from ..layers.binary import BinaryConv2d

SHORTCUTS = ("zeropad", "conv", "avgpool_conv")
UNIT_ACTS = ("identity", "hardtanh", "rprelu", "prelu", "relu")


class ZeroPadShortcut(nn.Module):
    """Option A: take every ``stride``-th pixel and zero-pad the new channels on both sides."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"zero-pad shortcut cannot shrink channels ({in_ch} -> {out_ch})")
        self.stride, self.pad = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        lo = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.pad - lo))


def Shortcut(in_ch: int, out_ch: int, stride: int, kind: str) -> nn.Module:
    """The residual path of a block whose input is (in_ch, stride) and output out_ch."""
    if kind not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {kind!r}; allowed: {', '.join(SHORTCUTS)}")
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    if kind == "zeropad":
        return ZeroPadShortcut(in_ch, out_ch, stride)
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))


def make_act(kind: str, channels: int) -> nn.Module:
    if kind not in UNIT_ACTS:
        raise ValueError(f"unknown activation {kind!r}; allowed: {', '.join(UNIT_ACTS)}")
    return {
        "identity": lambda: nn.Identity(),
        "hardtanh": lambda: nn.Hardtanh(),
        "rprelu": lambda: RPReLU(channels),
        "prelu": lambda: nn.PReLU(channels),
        "relu": lambda: nn.ReLU(inplace=True),
    }[kind]()


class BinaryUnit(nn.Module):
    """act(BN(pre_bn_act(BinaryConv_kxk(x))) + shortcut(x)) -- one binary conv with its own shortcut.

    ``pre_bn_act`` (identity by default) sits between the conv and its BatchNorm, as the ReLU
    of the ReSTE authors' ResNet-20s (``BN(ReLU(conv(x))) + x``, reference.md section on ReSTE).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, binary: dict, kernel_size: int = 3,
                 shortcut: str = "avgpool_conv", act: str = "identity", pre_bn_act: str = "identity",
                 conv_layer: Callable[..., nn.Module] = BinaryConv2d):
        super().__init__()
        self.conv = conv_layer(in_ch, out_ch, kernel_size, stride, kernel_size // 2, bias=False, **binary)
        self.pre_bn_act = make_act(pre_bn_act, out_ch)
        self.bn = nn.BatchNorm2d(out_ch)
        self.shortcut = Shortcut(in_ch, out_ch, stride, shortcut)
        self.act = make_act(act, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pre_bn_act(self.conv(x))) + self.shortcut(x))


class BinaryBasicBlock(nn.Sequential):
    """A ResNet basic block as two BinaryUnits, each with its own shortcut (Bi-Real)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, **unit_kwargs):
        super().__init__(BinaryUnit(in_ch, out_ch, stride, **unit_kwargs),
                         BinaryUnit(out_ch, out_ch, 1, **unit_kwargs))


class BasicBlock(nn.Module):
    """Full-precision basic block: relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = Shortcut(in_ch, out_ch, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)
