"""ReActNet's learnable shifts: LearnableBias, RSign and RPReLU (Liu et al., ECCV 2020).

- LearnableBias: x + b_c, one learnable b per channel (init 0).
- RSign (ReActNet Eq. 3): sign(x - alpha_c), a learnable per-channel threshold.  We store the
  shift as a LearnableBias b = -alpha (the authors' code adds it), init 0, then binarize
  with any registered estimator (ApproxSign by default, as in the authors' code).
- RPReLU (ReActNet Eq. 4): PReLU(x - gamma_c) + zeta_c, per-channel gamma, zeta (init 0)
  and slope (init 0.25, as nn.PReLU).

``dim`` is the channel dimension: 1 for NCHW feature maps, -1 for (batch, tokens, features).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Spec, build, register


def _shape(channels: int, dim: int, ndim: int) -> list[int]:
    shape = [1] * ndim
    shape[dim] = channels
    return shape


def _check_channels(channels: int) -> int:
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    return channels


class LearnableBias(nn.Module):
    """x + b, with one learnable b per channel along ``dim`` (init 0)."""

    def __init__(self, channels: int, dim: int = 1):
        super().__init__()
        self.channels, self.dim = _check_channels(channels), dim
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(_shape(self.channels, self.dim, x.dim()))

    def extra_repr(self) -> str:
        return f"{self.channels}, dim={self.dim}"


@register("rsign")
class RSign(nn.Module):
    """sign(x + b_c) with a learnable per-channel shift b (= -threshold), through ``estimator``."""

    def __init__(self, channels: int, estimator: Spec = "approx_sign", dim: int = 1):
        super().__init__()
        if estimator == "rsign" or (isinstance(estimator, dict) and estimator.get("name") == "rsign"):
            raise ValueError("rsign's estimator cannot itself be 'rsign'; use e.g. 'approx_sign' or 'reste'")
        self.shift = LearnableBias(channels, dim)
        self.estimator = build(estimator)
        if self.estimator is None:
            raise ValueError("rsign needs an estimator, e.g. 'approx_sign'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimator(self.shift(x))


class RPReLU(nn.Module):
    """PReLU(x - gamma) + zeta with per-channel gamma, zeta (init 0) and slope (init 0.25)."""

    def __init__(self, channels: int, dim: int = 1, init: float = 0.25):
        super().__init__()
        self.channels, self.dim = _check_channels(channels), dim
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), float(init)))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = _shape(self.channels, self.dim, x.dim())
        y = x - self.shift_in.view(shape)
        if self.dim in (1, 1 - x.dim()) or x.dim() == 1:  # channels at dim 1: aten's fused prelu
            y = F.prelu(y, self.slope)
        elif self.dim in (-1, x.dim() - 1):  # channels last (tokens): as rows of a 2-D prelu
            y = F.prelu(y.reshape(-1, self.channels), self.slope).reshape(y.shape)
        else:
            y = torch.where(y >= 0, y, y * self.slope.view(shape))
        return y + self.shift_out.view(shape)

    def extra_repr(self) -> str:
        return f"{self.channels}, dim={self.dim}"
