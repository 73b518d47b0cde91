"""BinaryViT's binary multi-head attention (paper 000, Eq. 6-8) and Bi-SR-MHA (Eq. 14-15).

    Q, K, V = BiFC_q(H), BiFC_k(H'), BiFC_v(H')          H' = H, or BiFC_R(AvgPool_R(H)) (Eq. 14)
    A = RSign(Q) RSign(K)^T                              (Eq. 6)
    P = alpha_P round(clip(softmax(A / sqrt(D_h)) / alpha_P, 0, 1))   (Eq. 7-8; alpha_P learnable, LSQ)
    head = RPReLU(BN(P RSign(V)) + Q + N(K) + N(V))      N: nearest resize back to H's grid (Eq. 15)
    out = BiFC_o(concat(heads))

Both products have binary operands: Q K^T with +-1 entries, P V with P in {0, alpha_P}.
Tokens that precede the grid (the baseline's cls token) skip the pooling of Eq. 14 and the
resize of Eq. 15: they are keys and values as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..binarize.react import RPReLU, RSign
from ..binarize.registry import Spec
from ..binarize.scaling import LearnedStep
from .bifc import BiFC, TokenBatchNorm


def tokens_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    b, n, c = x.shape
    return x.transpose(1, 2).reshape(b, c, *grid)


def split_extra(x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(leading tokens that are not on the grid, e.g. a cls token; the grid's tokens) of (B, N, C)."""
    extra = x.shape[1] - grid[0] * grid[1]
    if extra < 0:
        raise ValueError(f"{x.shape[1]} tokens cannot fill a {grid[0]}x{grid[1]} token grid")
    return x[:, :extra], x[:, extra:]


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class BinaryAttention(nn.Module):
    """Binary MHA on (B, N, C) tokens laid out on ``grid``; ``sr_ratio`` R > 1 is Bi-SR-MHA."""

    def __init__(self, dim: int, heads: int, sr_ratio: int = 1, *, act: Spec = "clipped_ste",
                 weight: Spec = "clipped_ste", scale: str = "channel", alpha_init: float = 0.005,
                 alpha_grad: str = "lsq", quantize_probs: bool = True):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"attention heads={heads} must divide the width dim={dim}")
        if sr_ratio < 1:
            raise ValueError(f"spatial-reduction ratio must be >= 1, got {sr_ratio}")
        self.dim, self.heads, self.sr_ratio = dim, heads, sr_ratio
        kw = dict(act=act, weight=weight, scale=scale)
        self.q, self.k, self.v = BiFC(dim, dim, **kw), BiFC(dim, dim, **kw), BiFC(dim, dim, **kw)
        self.reduce = BiFC(dim, dim, **kw) if sr_ratio > 1 else None  # BiFC_R only where R > 1
        # act=None / quantize_probs=False: the full-precision twin (real Q, K, V and probabilities)
        self.sign_q, self.sign_k, self.sign_v = (RSign(dim, act, dim=-1) if act is not None else nn.Identity()
                                                 for _ in range(3))
        self.prob = LearnedStep(alpha_init, levels=1, grad=alpha_grad) if quantize_probs else nn.Identity()
        self.norm = TokenBatchNorm(dim)
        self.act = RPReLU(dim, dim=-1)
        self.proj = BiFC(dim, dim, **kw)

    def check_grid(self, grid: tuple[int, int]) -> None:
        r = self.sr_ratio
        if r > 1 and (grid[0] % r or grid[1] % r):
            raise ValueError(f"spatial reduction R={r} does not divide the token grid {grid[0]}x{grid[1]}")

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    @property
    def binary_probs(self) -> bool:
        """True when P is BinaryViT's {0, alpha_P} quantizer (Eq. 8), so P / alpha_P is exactly 0 or 1."""
        return type(self.prob) is LearnedStep and self.prob.levels == 1

    def probs(self, a: torch.Tensor) -> torch.Tensor:
        """P from the integer scores A of (B, heads, N, M)."""
        return self.prob(torch.softmax(a / math.sqrt(self.dim // self.heads), dim=-1))  # Eq. 7-8

    def attend(self, qb: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
        """P V for binarized heads (B, heads, N or M, D_h); deploy.attention computes it on the engine.

        With P = alpha_P * {0, 1} the product is taken as alpha_P ((P / alpha_P) V): the codes P / alpha_P
        are exactly 0 or 1, so the matmul sums integers exactly and alpha_P scales once, the rounding the
        engine has (a running float sum of +-alpha_P terms rounds at every step, and those differences,
        though tiny, can flip a sign in the next RSign).  The same function; alpha_P is taken as a
        constant here (its two paths through / and * cancel), so its gradient comes through P alone, as
        for P V."""
        p = self.probs(qb @ kb.transpose(-2, -1))                                       # Eq. 6-8
        if self.binary_probs:
            s = self.prob.effective_step().detach()
            return s * ((p / s) @ vb)
        return p @ vb

    def forward(self, h: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = h.shape
        q = self.q(h)
        kv_in, small = h, None
        if self.reduce is not None:
            self.check_grid(grid)
            small = (grid[0] // self.sr_ratio, grid[1] // self.sr_ratio)
            extra, tokens = split_extra(h, grid)
            pooled = grid_to_tokens(F.avg_pool2d(tokens_to_grid(tokens, grid), self.sr_ratio))
            kv_in = self.reduce(torch.cat([extra, pooled], dim=1))                                # Eq. 14
        k, v = self.k(kv_in), self.v(kv_in)
        qb, kb, vb = self._heads(self.sign_q(q)), self._heads(self.sign_k(k)), self._heads(self.sign_v(v))
        ctx = self.attend(qb, kb, vb).transpose(1, 2).reshape(b, n, c)
        if small is not None:  # Eq. 15: nearest-neighbour resize of K and V back to the grid
            k, v = (torch.cat([e, grid_to_tokens(F.interpolate(tokens_to_grid(t, small), size=grid, mode="nearest"))],
                              dim=1) for e, t in (split_extra(k, small), split_extra(v, small)))
        return self.proj(self.act(self.norm(ctx) + q + k + v))
