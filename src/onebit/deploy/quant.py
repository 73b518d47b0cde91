"""Post-training int8 quantization of the real-valued first and last layers (weight-only).

    packed = onebit.deploy.pack(model, fold_bn=True)
    names = onebit.deploy.quantize_int8(packed)        # e.g. ['stem.0', 'fc'], in place

A binary network keeps its first layer (the stem convolution or patch embedding) and its last
(the classifier) real-valued; in a packed ResNet-18 they are half of what is left on disk.
:class:`Int8Conv2d` / :class:`Int8Linear` store their weights as symmetric per-output-channel int8

    q[f] = round(w[f] / s[f]) clamped to [-127, 127],    s[f] = max |w[f]| / 127   (s = 1 if w[f] = 0)

and compute in float32 with the dequantized weights q * s (weight-only, "W8A32"): the output is
exactly the float layer's output with those weights, so the only change is the weight rounding
(at most s/2 per weight).  Inputs and bias stay float32.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 q, float32 scale [out]) with w ~= q * scale[out] per output channel (dim 0)."""
    w = w.detach().to(torch.float32).cpu()
    amax = w.reshape(w.shape[0], -1).abs().amax(1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.view(view)).clamp(-127, 127).to(torch.int8)
    return q, scale


class _Int8(nn.Module):
    """Buffers ``weight_q`` (int8), ``weight_scale`` (float32 [out]) and ``bias`` (float32 or None)."""

    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    bias: Optional[torch.Tensor]

    def _init_buffers(self, shape: tuple, bias: bool) -> None:
        self.register_buffer("weight_q", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(shape[0]))
        self.register_buffer("bias", torch.zeros(shape[0]) if bias else None)
        self._cache: tuple = (None, None)

    def _set(self, layer: nn.Module) -> None:
        q, s = quantize_weight(layer.weight)
        self.weight_q.copy_(q)
        self.weight_scale.copy_(s)
        if self.bias is not None:
            self.bias.copy_(layer.bias.detach().to(torch.float32))

    def dequantized(self) -> torch.Tensor:
        """The dequantized float32 weight q * scale (cached until a buffer changes)."""
        key = (self.weight_q.data_ptr(), self.weight_q._version, self.weight_scale.data_ptr(),
               self.weight_scale._version, self.weight_q.device)
        if self._cache[0] != key:
            view = (-1,) + (1,) * (self.weight_q.dim() - 1)
            self._cache = (key, self.weight_q.to(torch.float32) * self.weight_scale.view(view))
        return self._cache[1]

    def _apply(self, fn, *args, **kwargs):
        self._cache = (None, None)
        return super()._apply(fn, *args, **kwargs)


class Int8Conv2d(_Int8):
    """Weight-only int8 twin of an ``nn.Conv2d`` (zeros padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                 bias: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = tuple(kernel_size), tuple(stride), tuple(dilation)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self._init_buffers((out_channels, in_channels // groups, *self.kernel_size), bias)

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "Int8Conv2d":
        if conv.padding_mode != "zeros":
            raise ValueError(f"int8: padding_mode {conv.padding_mode!r} is not supported (only 'zeros')")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None)
        m._set(conv)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype),
                        self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, int8")


class Int8Linear(_Int8):
    """Weight-only int8 twin of an ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_buffers((out_features, in_features), bias)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        m._set(linear)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def first_last_layers(model: nn.Module) -> list[str]:
    """Names of the first and last real-valued layers (plain nn.Conv2d / nn.Linear, in module
    registration order, which is the forward order of onebit's models); [] if there are none."""
    names = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    return [] if not names else sorted({names[0], names[-1]}, key=names.index)


def quantize_int8(model: nn.Module, layers: Optional[Iterable[str]] = None) -> list[str]:
    """Replace ``layers`` (default: :func:`first_last_layers`) of ``model`` in place by their int8
    twins; returns the names replaced.  Each must be a plain nn.Conv2d or nn.Linear."""
    names = first_last_layers(model) if layers is None else list(layers)
    modules = dict(model.named_modules())
    for name in names:
        m = modules.get(name)
        if type(m) is nn.Conv2d:
            q = Int8Conv2d.from_float(m)
        elif type(m) is nn.Linear:
            q = Int8Linear.from_float(m)
        else:
            what = "no such layer" if m is None else type(m).__name__
            raise ValueError(f"int8: {name!r} is not an nn.Conv2d or nn.Linear ({what})")
        q.to(next(m.parameters()).device)
        parent_name, _, child = name.rpartition(".")
        modules[parent_name]._modules[child] = q
    return names
