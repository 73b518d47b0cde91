"""Exact, faster stand-ins for nn.MaxPool2d and nn.AvgPool2d in packed models.

torch's NCHW max pooling at batch 1 is slow on these CPUs (the 3x3 / 2 stem pool of ResNet-18
takes about 7-9 ms on one Zen 3 thread, more than all binary convolutions of a stage).  A max is
exact in any order, so pooling rows first and columns second gives the very same tensor: the C++
engine's separable max pool (float32 contiguous CPU inputs; about 0.7 ms for that pool) or, for
other inputs, strided slices in torch.  The average pool (Bi-Real's 2x2 down-sampling shortcut)
runs in the engine with torch's own float order (sum of the taps row by row from 0, then / (kH kW)),
so it is bit for bit torch's.  pack() swaps both in where the options allow.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..binarize.fused import conv_out_size


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _engine_ok(x: torch.Tensor) -> bool:
    """x can go to the engine's pools as it is: float32, CPU, contiguous 4-D, no gradient, not empty."""
    return (x.dtype is torch.float32 and x.device.type == "cpu" and x.dim() == 4 and not x.requires_grad
            and x.is_contiguous() and x.numel() > 0)


def avg_supported(pool: nn.Module) -> bool:
    """Options the engine's average pool reproduces bit for bit: nn.AvgPool2d, no padding, floor
    mode, no divisor override (count_include_pad does not matter without padding)."""
    return (type(pool) is nn.AvgPool2d and _pair(pool.padding) == (0, 0) and not pool.ceil_mode
            and pool.divisor_override is None)


class ExactAvgPool2d(nn.AvgPool2d):
    """nn.AvgPool2d (no padding, floor mode) computed by the engine in torch's float order, so the
    very same tensor; other inputs (dtypes, devices, gradients) go to nn.AvgPool2d itself."""

    @classmethod
    def from_pool(cls, pool: nn.AvgPool2d) -> "ExactAvgPool2d":
        if not avg_supported(pool):
            raise ValueError(f"ExactAvgPool2d cannot reproduce {pool}: padding, ceil_mode and divisor_override "
                             f"are not supported; keep nn.AvgPool2d")
        return cls(pool.kernel_size, pool.stride, 0, False, pool.count_include_pad, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _engine_ok(x):
            (kh, kw), (sh, sw) = _pair(self.kernel_size), _pair(self.stride)
            oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
            if oh >= 1 and ow >= 1:
                from . import engine
                return torch.from_numpy(engine._C.avgpool2d(x.numpy(), (kh, kw), (sh, sw), (oh, ow),
                                                            engine.get_path(), engine.get_num_threads()))
        return super().forward(x)


def separable_supported(pool: nn.MaxPool2d) -> bool:
    """Options the separable pool reproduces exactly: no dilation, no indices, floor mode,
    padding at most half the kernel (as torch requires)."""
    return (type(pool) is nn.MaxPool2d and _pair(pool.dilation) == (1, 1) and not pool.return_indices
            and not pool.ceil_mode)


class SeparableMaxPool2d(nn.Module):
    """max over a kH x kW window = max over kW columns of (max over kH rows); -inf padding."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> "SeparableMaxPool2d":
        if not separable_supported(pool):
            raise ValueError(f"SeparableMaxPool2d cannot reproduce {pool}: dilation, indices and ceil_mode "
                             f"are not supported; keep nn.MaxPool2d")
        return cls(pool.kernel_size, pool.stride, pool.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if _engine_ok(x) and 2 * ph <= kh and 2 * pw <= kw:
            oh, ow = conv_out_size(x.shape[2:], (kh, kw), (sh, sw), (ph, pw))
            if oh >= 1 and ow >= 1:
                from . import engine
                return torch.from_numpy(engine._C.maxpool2d(x.numpy(), (kh, kw), (sh, sw), (ph, pw), (oh, ow),
                                                            engine.get_path(), engine.get_num_threads()))
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=float("-inf"))
        h, w = x.shape[-2], x.shape[-1]
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        rows = x[..., 0:(oh - 1) * sh + 1:sh, :]
        for i in range(1, kh):
            rows = torch.maximum(rows, x[..., i:i + (oh - 1) * sh + 1:sh, :])
        out = rows[..., 0:(ow - 1) * sw + 1:sw]
        for j in range(1, kw):
            out = torch.maximum(out, rows[..., j:j + (ow - 1) * sw + 1:sw])
        return out.contiguous()

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
