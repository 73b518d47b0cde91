"""BinaryViT (paper 000): from the baseline binary DeiT to the pyramid BinaryViT, each addition a switch.

Baseline binary DeiT (Sec. 2, Eq. 5, 9, 10): real patch embedding, cls token, position
embedding, blocks H = H + MHA(BN(H)); H = H + FFN(BN(H)) with BiFC for every linear and
binary attention, BatchNorm in place of LayerNorm, real classifier.  The additions of
Table 3, in order:

(a) ``pool="gap"``: global average pooling of the tokens instead of the cls token (Eq. 11);
(b) ``pool_branches=True``: four average pools over the token grid (kernels 1x3, 3x1, 1x5,
    5x1, stride 1, same padding) beside each FFN, on the FFN's normalised input, each through
    its own alpha * x + beta (alpha, beta init 0: the authors' code has these in row (b) too);
(c) ``residual_scale="affine"``: alpha * x + beta on each main branch before its residual
    (Eq. 12-13; alpha init 0.1, as the authors' code); ``"post_norm"`` (res-post-norm: BN after
    the branch instead of before) and ``"sandwich"`` (BN before and after) are the alternatives
    of Sec. 3.3;
(d) the pyramid: several stages (Table 6), a BN after the real patch embedding, patch merging
    between stages (BN, then a binary 2x2 stride-2 conv with a concatenated 2x2-average
    shortcut and RPReLU, as ReActNet's down-sampling; for BinaryViT* a real conv and BN, no
    shortcut; each merge adds a learned position embedding of its grid, as the authors' code),
    Bi-SR-MHA with reduction R (Eq. 14-15).

Each switch works without the others, except that the pyramid needs ``pool="gap"`` (its patch
merging works on the token grid; the paper's pyramid has no cls token): with a cls token the
pooling branches and Bi-SR-MHA leave that token out of their pooling.  ``weight_scale="tensor"``
gives every BiFC Eq. 1's one scalar alpha instead of the authors' per-row one.
``binary=False`` builds the full-precision twin of the same architecture (teachers).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..binarize.react import RPReLU
from ..binarize.registry import Spec
from ..layers.attention import BinaryAttention, grid_to_tokens, split_extra, tokens_to_grid
from ..layers.bifc import BiFC, FeatureResidual, TokenBatchNorm
from ..layers.binary import BinaryConv2d
from .registry import register_model

RESIDUAL_SCALES = (None, "affine", "post_norm", "sandwich")
POOL_KERNELS = ((1, 3), (3, 1), (1, 5), (5, 1))


class LayerScale(nn.Module):
    """alpha * x + beta with per-feature alpha, beta (BinaryViT Eq. 12-13)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), float(init)))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, x, self.alpha)


class PoolBranches(nn.Module):
    """Sum of four average pools over the token grid, each through its own LayerScale (alpha, beta 0);
    tokens before the grid (a cls token) get 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.pools = nn.ModuleList(nn.AvgPool2d(k, 1, (k[0] // 2, k[1] // 2)) for k in POOL_KERNELS)
        self.scales = nn.ModuleList(LayerScale(dim, 0.0) for _ in POOL_KERNELS)

    def forward(self, y: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        extra, tokens = split_extra(y, grid)
        g = tokens_to_grid(tokens, grid)
        out = sum(s(grid_to_tokens(p(g))) for p, s in zip(self.pools, self.scales))
        return torch.cat([torch.zeros_like(extra), out], dim=1) if extra.shape[1] else out


class Block(nn.Module):
    """One transformer block of BinaryViT (pre-norm with BatchNorm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int = 1, *, pool_branches: bool = False,
                 residual_scale: str | None = None, ls_init: float = 0.1, binary: bool = True,
                 act: Spec = "clipped_ste", weight: Spec = "clipped_ste", weight_scale: str = "channel",
                 alpha_grad: str = "lsq", alpha_init: float = 0.005):
        super().__init__()
        if residual_scale not in RESIDUAL_SCALES:
            raise ValueError(f"unknown residual_scale {residual_scale!r}; allowed: {RESIDUAL_SCALES}")
        kw = dict(act=act if binary else None, weight=weight if binary else None, scale=weight_scale)
        pre = residual_scale != "post_norm"
        self.norm1 = TokenBatchNorm(dim) if pre else nn.Identity()
        self.attn = BinaryAttention(dim, heads, sr_ratio, **kw, alpha_init=alpha_init, alpha_grad=alpha_grad,
                                    quantize_probs=binary)
        self.norm2 = TokenBatchNorm(dim) if pre else nn.Identity()
        self.ffn = nn.Sequential(BiFC(dim, dim * mlp_ratio, **kw), BiFC(dim * mlp_ratio, dim, **kw))
        self.scale1, self.scale2 = (self._scale(residual_scale, dim, ls_init) for _ in range(2))
        self.pools = PoolBranches(dim) if pool_branches else None

    @staticmethod
    def _scale(kind: str | None, dim: int, init: float) -> nn.Module:
        if kind == "affine":
            return LayerScale(dim, init)
        if kind in ("post_norm", "sandwich"):
            return TokenBatchNorm(dim)
        return nn.Identity()

    def forward(self, h: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        h = h + self.scale1(self.attn(self.norm1(h), grid))
        y = self.norm2(h)
        out = h + self.scale2(self.ffn(y))
        if self.pools is not None:
            out = out + self.pools(y, grid)
        return out


class PatchMerge(nn.Module):
    """Patch merging between pyramid stages, halving the token grid (the authors' code, reference.md
    section 7): x = BN0(h); binary: RPReLU(BN(BinConv2x2_s2(RSign(x))) + cat_n(AvgPool2x2(x))), the
    down-sampling of ReActNet with out = n x in; real (BinaryViT*): BN(Conv2x2_s2(x)), no shortcut.
    Then a learned position embedding of the new grid."""

    def __init__(self, in_dim: int, out_dim: int, tokens: int, binary: bool, act: Spec = "clipped_ste",
                 weight: Spec = "clipped_ste"):
        super().__init__()
        self.norm0 = TokenBatchNorm(in_dim)
        if binary:
            if out_dim % in_dim:
                raise ValueError(f"binary patch merging concatenates copies of its input as the shortcut, so the "
                                 f"next stage's width ({out_dim}) must be a multiple of this one's ({in_dim})")
            self.conv = BinaryConv2d(in_dim, out_dim, 2, 2, bias=False,
                                     input_binarizer={"name": "rsign", "estimator": act}, weight_binarizer=weight)
            self.shortcut = nn.AvgPool2d(2, 2)
            self.residual = FeatureResidual(in_dim, out_dim)
            self.act = RPReLU(out_dim, dim=-1)
        else:
            self.conv = nn.Conv2d(in_dim, out_dim, 2, 2, bias=False)
            self.shortcut = self.residual = self.act = None
        self.norm = TokenBatchNorm(out_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, out_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, h: torch.Tensor, grid: tuple[int, int]):
        x = tokens_to_grid(self.norm0(h), grid)
        y = self.conv(x)
        out = self.norm(grid_to_tokens(y))
        if self.act is not None:
            out = self.act(out + self.residual(grid_to_tokens(self.shortcut(x))))
        return out + self.pos_embed, (y.shape[2], y.shape[3])


class BinaryViT(nn.Module):
    """A (pyramid) binary vision transformer; one stage with ``pool="cls"`` is the binary DeiT.

    ``alpha_init`` is alpha_P's initial value in every attention layer (Eq. 8): 0.005 as the authors'
    code, about 1 / 196 keys at ImageNet size, or ``"keys"``: 1 / each layer's number of keys M."""

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, patch_size: int = 16,
                 embed_dims: Sequence[int] = (384,), depths: Sequence[int] = (12,), heads: Sequence[int] = (6,),
                 mlp_ratios: Sequence[int] = (4,), sr_ratios: Sequence[int] = (1,), pool: str = "cls",
                 pool_branches: bool = False, residual_scale: str | None = None, ls_init: float = 0.1,
                 merge: str | None = None, binary: bool = True, act: Spec = "clipped_ste",
                 weight: Spec = "clipped_ste", weight_scale: str = "channel", alpha_grad: str = "lsq",
                 alpha_init: float | str = 0.005):
        super().__init__()
        n = len(embed_dims)
        if not (len(depths) == len(heads) == len(mlp_ratios) == len(sr_ratios) == n):
            raise ValueError(f"embed_dims, depths, heads, mlp_ratios and sr_ratios need one entry per stage; got "
                             f"{len(embed_dims)}, {len(depths)}, {len(heads)}, {len(mlp_ratios)}, {len(sr_ratios)}")
        for key, values in (("embed_dims", embed_dims), ("depths", depths), ("heads", heads),
                            ("mlp_ratios", mlp_ratios), ("sr_ratios", sr_ratios), ("patch_size", (patch_size,)),
                            ("img_size", (img_size,))):
            if any(not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{key} must be positive integers, got {tuple(values)}")
        if pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap', got {pool!r}")
        if pool == "cls" and n > 1:
            raise ValueError("a cls token needs one stage (patch merging works on the token grid alone); "
                             "use pool='gap' for a pyramid")
        if merge is not None and n == 1:
            raise ValueError(f"merge={merge!r} sets the patch merging between stages, but this model has one stage")
        if not (alpha_init == "keys" or (isinstance(alpha_init, (int, float)) and alpha_init > 0)):
            raise ValueError(f"alpha_init must be a positive number or 'keys' (1 / each layer's number of keys), "
                             f"got {alpha_init!r}")
        merge = merge or "binary"
        if merge not in ("binary", "real"):
            raise ValueError(f"merge must be 'binary' or 'real', got {merge!r}")
        if img_size % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide the image size {img_size}")
        side = img_size // patch_size
        for i in range(n):
            if i > 0:
                if side % 2:
                    raise ValueError(f"patch merging halves the token grid, but stage {i + 1} gets a "
                                     f"{side}x{side} grid; choose img_size / patch_size divisible by {2 ** (n - 1)}")
                side //= 2
            if embed_dims[i] % heads[i]:
                raise ValueError(f"stage {i + 1}: heads={heads[i]} must divide the width {embed_dims[i]}")
            if sr_ratios[i] > 1 and side % sr_ratios[i]:
                raise ValueError(f"stage {i + 1}: spatial reduction R={sr_ratios[i]} does not divide the "
                                 f"{side}x{side} token grid")
        self.grid0 = (img_size // patch_size,) * 2
        self.default_input_size = (in_chans, img_size, img_size)
        self.pool, self.num_classes = pool, num_classes
        self.patch_embed = nn.Conv2d(in_chans, embed_dims[0], patch_size, patch_size)  # real (Sec. 2)
        self.embed_norm = TokenBatchNorm(embed_dims[0]) if n > 1 else nn.Identity()  # the pyramid's stem BN
        tokens = self.grid0[0] * self.grid0[1] + (1 if pool == "cls" else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[0])) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, embed_dims[0]))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        bkw = dict(pool_branches=pool_branches, residual_scale=residual_scale, ls_init=ls_init, binary=binary,
                   act=act, weight=weight, weight_scale=weight_scale, alpha_grad=alpha_grad)
        cls = 1 if pool == "cls" else 0
        self.merges = nn.ModuleList()
        self.stages = nn.ModuleList()
        side = self.grid0[0]
        for i in range(n):
            if i > 0:
                side //= 2
                self.merges.append(PatchMerge(embed_dims[i - 1], embed_dims[i], side * side,
                                              binary and merge == "binary", act, weight))
            keys = (side // sr_ratios[i]) ** 2 + cls
            alpha = 1.0 / keys if alpha_init == "keys" else float(alpha_init)
            self.stages.append(nn.ModuleList(Block(embed_dims[i], heads[i], mlp_ratios[i], sr_ratios[i], **bkw,
                                                   alpha_init=alpha) for _ in range(depths[i])))
        self.norm = TokenBatchNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)  # real classifier
        self.num_features = embed_dims[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
        h = self.patch_embed(x)
        grid = (h.shape[2], h.shape[3])
        if grid != self.grid0:
            raise ValueError(f"expected {self.default_input_size[1]}x{self.default_input_size[2]} images, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        h = self.embed_norm(grid_to_tokens(h))
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(len(h), -1, -1), h], dim=1)
        h = h + self.pos_embed
        for i, blocks in enumerate(self.stages):
            if i > 0:
                h, grid = self.merges[i - 1](h, grid)
            for blk in blocks:
                h = blk(h, grid)
        h = self.norm(h)
        return h[:, 0] if self.cls_token is not None else h.mean(1)  # Eq. 10 / Eq. 11

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# --- registry --------------------------------------------------------------------------------

DEIT_S = dict(img_size=224, patch_size=16, embed_dims=(384,), depths=(12,), heads=(6,), mlp_ratios=(4,),
              sr_ratios=(1,))
PYRAMID = dict(img_size=224, patch_size=4, embed_dims=(64, 128, 256, 512), depths=(3, 4, 8, 4),
               heads=(1, 2, 4, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 1, 1))  # Table 6
FULL = dict(pool="gap", pool_branches=True, residual_scale="affine")
# CIFAR-10 sizes (32x32): see the table in docs/binaryvit.md for why these widths
CIFAR_FLAT = dict(img_size=32, patch_size=4, embed_dims=(128,), depths=(6,), heads=(4,), mlp_ratios=(4,),
                  sr_ratios=(1,), num_classes=10)
CIFAR_PYRAMID = dict(img_size=32, patch_size=2, embed_dims=(48, 96, 192, 384), depths=(2, 2, 4, 2),
                     heads=(1, 2, 4, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(4, 2, 1, 1), num_classes=10)


def _vit(layout: dict, switches: dict, kwargs: dict) -> BinaryViT:
    return BinaryViT(**{**layout, **switches, **kwargs})


@register_model
def binary_deit_s(**kwargs):
    """Baseline binary DeiT-S (Table 4: 22.1 M parameters)."""
    return _vit(DEIT_S, {}, kwargs)


@register_model
def deit_s_fp(**kwargs):
    """Full-precision twin of binary_deit_s (same blocks, real BiFC and attention)."""
    return _vit(DEIT_S, {"binary": False}, kwargs)


@register_model
def binaryvit(**kwargs):
    """BinaryViT (Table 6; Table 4: 22.6 M parameters, 67.7% ImageNet top-1)."""
    return _vit(PYRAMID, FULL, kwargs)


@register_model
def binaryvit_star(**kwargs):
    """BinaryViT* with real-valued patch merging (Table 4: 70.6%)."""
    return _vit(PYRAMID, {**FULL, "merge": "real"}, kwargs)


@register_model
def binaryvit_fp(**kwargs):
    """Full-precision twin of binaryvit."""
    return _vit(PYRAMID, {**FULL, "binary": False}, kwargs)


TABLE3_ROWS = {  # CIFAR-10 sized rows of Table 3, each adding one switch to the row above
    "binaryvit_cifar_baseline": (CIFAR_FLAT, {}),
    "binaryvit_cifar_gap": (CIFAR_FLAT, {"pool": "gap"}),
    "binaryvit_cifar_pool": (CIFAR_FLAT, {"pool": "gap", "pool_branches": True}),
    "binaryvit_cifar_affine": (CIFAR_FLAT, FULL),
    "binaryvit_cifar": (CIFAR_PYRAMID, FULL),
}


def _register_cifar(name: str, layout: dict, switches: dict) -> None:
    def factory(**kwargs):
        return _vit(layout, switches, kwargs)

    factory.__name__ = name
    factory.__doc__ = f"CIFAR-10 BinaryViT, Table 3 row {name.split('_')[-1]}."
    register_model(factory)


for _name, (_layout, _switches) in TABLE3_ROWS.items():
    _register_cifar(_name, _layout, _switches)


@register_model
def binaryvit_cifar_fp(**kwargs):
    """Full-precision twin of binaryvit_cifar (teacher)."""
    return _vit(CIFAR_PYRAMID, {**FULL, "binary": False}, kwargs)
