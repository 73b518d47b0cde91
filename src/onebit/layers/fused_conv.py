"""BinaryConv2d's training forward on the C++ engine (x86 CPUs, float32).

With +-1 activations and +-1 weights, conv2d sums exact integers, so the engine's XNOR-popcount
convolution (zero padding contributing 0, as in torch) gives torch's result bit for bit, 2-5x
faster at CIFAR ResNet-20's training shapes.  The backward pass stays torch's
(``aten.convolution_backward`` on the same saved ±1 tensors): gradients are unchanged.

:func:`conv2d` returns None wherever torch's conv must run instead: a binarizer that may output
other values than ±1 (real weights in a first training stage, BNext's soft progressive phase, a
user's own module), tensors off the CPU or not float32, string padding, an input too small for
the kernel (torch's error then), a CPU without AVX2, inside torch.compile, or after
``onebit.binarize.fused.use_engine(False)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..binarize import fused
from ..binarize.estimators import Binarizer, ProgressiveBinarizer
from ..binarize.react import RSign


def outputs_signs(b: Optional[nn.Module]) -> bool:
    """True if binarizer ``b`` outputs only -1 and +1 (at its current training progress)."""
    if isinstance(b, RSign):
        return outputs_signs(b.estimator)
    if isinstance(b, ProgressiveBinarizer):
        return b.hard
    return isinstance(b, Binarizer)


class _EngineConv2d(torch.autograd.Function):
    """Forward: the engine's binary convolution of ±1 xb and wb.  Backward: torch's."""

    @staticmethod
    def forward(ctx, xb, wb, stride, padding, dilation, groups):
        ctx.save_for_backward(xb, wb)
        ctx.conf = (stride, padding, dilation, groups)
        return fused.binary_conv2d(xb, wb, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        xb, wb = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g, xb, wb, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return gx, gw, None, None, None, None


def conv2d(layer: nn.Conv2d, xb: torch.Tensor, wb: torch.Tensor) -> Optional[torch.Tensor]:
    """``layer``'s conv of binarized ``xb`` and ``wb`` (no bias, no scale) on the engine, or None."""
    if not fused.engine_enabled() or torch.compiler.is_compiling() or isinstance(layer.padding, str):
        return None
    if not (outputs_signs(layer.input_binarizer) and outputs_signs(layer.weight_binarizer)):
        return None
    if xb.device.type != "cpu" or xb.dtype != torch.float32 or wb.dtype != torch.float32:
        return None
    if min(fused.conv_out_size(xb.shape[2:], wb.shape[2:], layer.stride, layer.padding, layer.dilation)) < 1:
        return None  # torch's conv says what is wrong with the shapes
    return _EngineConv2d.apply(xb, wb, layer.stride, layer.padding, layer.dilation, layer.groups)
