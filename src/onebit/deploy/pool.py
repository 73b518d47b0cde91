"""An exact, faster stand-in for nn.MaxPool2d in packed models.

torch's NCHW max pooling at batch 1 is slow on these CPUs (the 3x3 / 2 stem pool of ResNet-18
takes about 9 ms on one Zen 3 thread, more than all binary convolutions of a stage).  A max is
exact in any order, so pooling rows first and columns second over strided slices gives the very
same tensor, in a quarter of the time.  pack() swaps it in where the options allow.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


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
