"""Drop-in binary layers: BinaryConv2d and BinaryLinear.

They take the constructor of nn.Conv2d / nn.Linear (with two limits: padding_mode is 'zeros' only,
the padding the packed engine reproduces, and BinaryConv2d wants batched (N, C, H, W) inputs),
plus keyword-only

- ``input_binarizer``: spec of the activation binarizer (a registered name, a
  ``{"name": ..., **options}`` dict, a module, or None to keep activations real);
- ``weight_binarizer``: spec of the weight binarizer (None keeps weights real, as in
  ReActNet's first training stage);
- ``scale``: ``"channel"`` (XNOR alpha_c = mean|W_c|), ``"tensor"`` or ``"none"``;
- ``center``: subtract each output row's mean from W before the sign (BinaryViT Eq. 1);
- ``scale_grad``: let the gradient flow through alpha (default: alpha detached).

Forward:  y = op(B_a(x), B_w(W)) * alpha + bias, where op is conv2d or linear.  The scale
alpha (one per output channel) multiplies the output rather than the weights: the same function
and gradients, but with +-1 operands op sums exact integers, so the float result equals the packed
engine's integer accumulator times alpha bit for bit, whatever order the float kernel sums in.
The latent float weight stays in ``self.weight`` for training.  Zero padding pads the
binarized activations with 0 (exactly what the packed engine reproduces).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..binarize.registry import Spec, build
from ..binarize.scaling import center_weight, check_scale, weight_scale
from . import fused_conv


class BinaryLayer:
    """Marker base of every layer whose weights and/or activations are binary.

    Analysis and packing find binary layers with ``isinstance(m, BinaryLayer)``.
    """

    input_binarizer: Optional[nn.Module]
    weight_binarizer: Optional[nn.Module]

    def _init_binary(self, input_binarizer: Spec, weight_binarizer: Spec, scale: str, center: bool,
                     scale_grad: bool, channel_dim: int) -> None:
        self.scale = check_scale(scale)
        self.center, self.scale_grad = bool(center), bool(scale_grad)
        in_ch = self.weight.shape[1] * getattr(self, "groups", 1)
        self.input_binarizer = build(input_binarizer, channels=in_ch, dim=channel_dim)
        self.weight_binarizer = build(weight_binarizer, channels=self.weight.shape[0], dim=0)
        if self.center and getattr(self.weight_binarizer, "clamp", None) is not None:
            raise ValueError(f"center=True with the {type(self.weight_binarizer).__name__} weight binarizer, which "
                             f"clamps the latent weights in place (clamp={self.weight_binarizer.clamp}): it would "
                             f"clamp a centred copy, never the weights; use center=False (BNext does not centre) "
                             f"or the binarizer's clamp=None")
        for b in (self.input_binarizer, self.weight_binarizer):  # their parameters (RSign's shift) follow
            if b is not None:                                     # the layer's device= and dtype=
                b.to(device=self.weight.device, dtype=self.weight.dtype)

    @property
    def binary_weights(self) -> bool:
        return self.weight_binarizer is not None

    @property
    def binary_inputs(self) -> bool:
        return self.input_binarizer is not None

    def weight_parts(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B_w(W), alpha): the binarized weight and its scale (shaped like W's leading dim, or
        None); (W, None) if weights are real."""
        w = self.weight
        if self.weight_binarizer is None:
            return w, None
        wb = self.weight_binarizer(center_weight(w) if self.center else w)
        return wb, weight_scale(w, self.scale, self.scale_grad)

    def binary_weight(self) -> torch.Tensor:
        """The weight the layer computes with: alpha * B_w(W) (or W if weights are real)."""
        wb, alpha = self.weight_parts()
        return wb if alpha is None else wb * alpha

    def _scaled(self, y: torch.Tensor, alpha: Optional[torch.Tensor], channel_dim: int) -> torch.Tensor:
        """y * alpha per output channel, then + bias."""
        if alpha is not None:
            y = y * alpha.reshape(shape_of(y, channel_dim) if alpha.numel() > 1 else ())
        return y if self.bias is None else y + self.bias.reshape(shape_of(y, channel_dim))

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_binarizer is None else self.input_binarizer(x)

    def _binary_repr(self) -> str:
        def name(b):
            return "real" if b is None else type(b).__name__
        return (f", input={name(self.input_binarizer)}, weight={name(self.weight_binarizer)}, "
                f"scale={self.scale}" + (", center=True" if self.center else ""))


def shape_of(y: torch.Tensor, channel_dim: int) -> list[int]:
    """Broadcast shape of a per-channel vector along ``channel_dim`` of ``y``."""
    shape = [1] * y.dim()
    shape[channel_dim] = -1
    return shape


class BinaryConv2d(nn.Conv2d, BinaryLayer):
    """nn.Conv2d with binary activations and weights (see module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, input_binarizer: Spec = "clipped_ste",
                 weight_binarizer: Spec = "clipped_ste", scale: str = "channel",
                 center: bool = False, scale_grad: bool = False):
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"BinaryConv2d {name} must be a positive integer, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"BinaryConv2d groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        if padding_mode != "zeros":
            raise ValueError(f"BinaryConv2d supports padding_mode='zeros' only (the engine pads with 0), "
                             f"got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_binary(input_binarizer, weight_binarizer, scale, center, scale_grad, channel_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"BinaryConv2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        wb, alpha = self.weight_parts()
        xb = self.binarize_input(x)
        y = fused_conv.conv2d(self, xb, wb)  # the engine, where it applies: the same bits, faster
        return self._scaled(self._conv_forward(xb, wb, None) if y is None else y, alpha, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._binary_repr()


class BinaryLinear(nn.Linear, BinaryLayer):
    """nn.Linear with binary activations and weights (see module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 input_binarizer: Spec = "clipped_ste", weight_binarizer: Spec = "clipped_ste",
                 scale: str = "channel", center: bool = False, scale_grad: bool = False):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"BinaryLinear {name} must be a positive integer, got {v!r}")
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_binary(input_binarizer, weight_binarizer, scale, center, scale_grad, channel_dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"BinaryLinear expects inputs (..., {self.in_features}), got shape {tuple(x.shape)}")
        wb, alpha = self.weight_parts()
        return self._scaled(F.linear(self.binarize_input(x), wb), alpha, -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._binary_repr()
