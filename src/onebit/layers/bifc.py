"""BinaryViT's binary fully-connected layer, BiFC (paper 000, Eq. 1-3), on token tensors.

    BiFC(X) = RPReLU( BN( RSign(X) (alpha sign(W - mu(W)))^T ) + R(X) )

- RSign: sign(x + b) with a learnable per-feature shift b; the backward is the clipped STE
  of Eq. 4 by default (``act``), any registered estimator by option (the authors' code uses
  ApproxSign, ``act="approx_sign"``; ReSTE: ``act={"name": "reste"}``);
- weights centred by their per-row mean and binarized, alpha = mean|W| per output row of the
  un-centred W, detached (Eq. 1; the authors' code: the paper's alpha is one scalar);
- BN after the binary product, statistics over batch x tokens (:class:`TokenBatchNorm`);
- R(X) (Eq. 3): identity when out = in, X repeated n times when out = n * in, the average of
  n consecutive feature groups when in = n * out;
- RPReLU after the addition.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..binarize.react import RPReLU
from ..binarize.registry import Spec
from .binary import BinaryLinear


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last (feature) dimension of (..., C) tokens, statistics over all tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class FeatureResidual(nn.Module):
    """R(X) of BinaryViT Eq. 3: identity, repeat n times, or average n groups of features."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        if out_features % in_features == 0:
            self.mode, self.n = ("identity" if out_features == in_features else "repeat"), out_features // in_features
        elif in_features % out_features == 0:
            self.mode, self.n = "average", in_features // out_features
        else:
            raise ValueError(f"BiFC residual needs out = n x in or in = n x out; got in={in_features}, "
                             f"out={out_features}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity":
            return x
        if self.mode == "repeat":
            return x.repeat(*([1] * (x.dim() - 1)), self.n)
        return x.unflatten(-1, (self.n, -1)).mean(-2)  # n consecutive groups of out features

    def extra_repr(self) -> str:
        return f"{self.mode}, n={self.n}"


class BiFC(nn.Module):
    """Binary FC on (B, N, in) tokens with BN, the Eq. 3 residual and RPReLU (see module doc)."""

    def __init__(self, in_features: int, out_features: int, *, act: Spec = "clipped_ste",
                 weight: Spec = "clipped_ste", scale: str = "channel", center: bool = True,
                 residual: bool = True, bias: bool = False):
        super().__init__()
        self.linear = BinaryLinear(in_features, out_features, bias=bias,  # act/weight None: real (fp twin)
                                   input_binarizer=None if act is None else {"name": "rsign", "estimator": act},
                                   weight_binarizer=weight, scale=scale, center=center)
        self.norm = TokenBatchNorm(out_features)
        self.residual = FeatureResidual(in_features, out_features) if residual else None
        self.act = RPReLU(out_features, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.linear(x))
        if self.residual is not None:
            y = y + self.residual(x)
        return self.act(y)
