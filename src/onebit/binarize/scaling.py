"""Scaling factors for binary weights, and the learnable-step quantizer (LSQ).

Weight scale ``alpha`` multiplies the binarized weight, one value per output channel
(``channel``: XNOR-Net, alpha_c = mean over (in, kh, kw) of |W_c|) or per tensor
(``tensor``: the ReSTE authors' CIFAR code, alpha = mean |W|), or ``none`` (BNext: the
following BN absorbs it).  ``center`` subtracts each output row's mean before the sign
(BinaryViT Eq. 1: W~ = sign(W - mu(W)) with alpha = mean|W| of the un-centred W, as in
the authors' code).  ``scale_grad`` lets the gradient flow through alpha (ReSTE's code);
by default alpha is detached (XNOR / ReActNet / BinaryViT code).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .registry import register

WEIGHT_SCALES = ("none", "channel", "tensor")


def check_scale(scale: str) -> str:
    if scale not in WEIGHT_SCALES:
        raise ValueError(f"unknown weight scale {scale!r}; allowed: {', '.join(WEIGHT_SCALES)}")
    return scale


def center_weight(w: torch.Tensor) -> torch.Tensor:
    """W - mean(W) per output row (BinaryViT Eq. 1, mu(W))."""
    return w - w.mean(dim=tuple(range(1, w.dim())), keepdim=True)


def weight_scale(w: torch.Tensor, scale: str, grad: bool = False):
    """alpha for ``w`` (shape broadcastable to w), or None for ``none``."""
    if scale == "none":
        return None
    src = w if grad else w.detach()
    if scale == "channel":
        return src.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return src.abs().mean()


MIN_STEP = 1e-5  # floor on the step in the forward pass (the authors' BiT-style code: eps = 1e-5)


class _RoundClipStep(torch.autograd.Function):
    """y = s * round(clamp(x / s, 0, Q_p)) with s = max(step, MIN_STEP); LSQ gradients with optional
    step-gradient scale g, passed to the raw step straight through the floor (as the authors' code)."""

    @staticmethod
    def forward(ctx, x, step, q_p: int, g: float):
        step = step.clamp_min(MIN_STEP)
        q = x / step
        ctx.save_for_backward(q)
        ctx.q_p, ctx.g = q_p, g
        return step * q.clamp(0, q_p).round()

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensors
        inside = (q >= 0) & (q <= ctx.q_p)
        grad_x = grad * inside.to(grad.dtype)
        # d y / d s: round(q) - q inside, Q_p above, 0 below (LSQ Eq. 3)
        dstep = torch.where(inside, q.round() - q, torch.where(q > ctx.q_p, float(ctx.q_p), 0.0))
        grad_s = (grad * dstep).sum() * ctx.g
        return grad_x, grad_s.reshape(1), None, None


@register("lsq")
class LearnedStep(nn.Module):
    """Unsigned learnable-step quantizer to {0, s, ..., Q_p s}; Q_p = 1 is BinaryViT's alpha_P.

    BinaryViT Eq. 8: P = alpha_P round(clip(softmax(A / sqrt(D_h)) / alpha_P, 0, 1)), alpha_P
    learnable, init 0.005 (authors' code).  ``grad="lsq"`` scales the step gradient by
    g = 1 / sqrt(N Q_p) with N the elements of one sample (Esser et al. 2020, as the paper
    cites); ``grad="bit"`` uses no scale (the authors' BiT-style code).  Default: ``lsq``.
    The forward pass uses max(step, MIN_STEP), so that an optimizer step that takes the parameter
    to 0 or below neither divides by zero nor zeroes every output with no gradient left to recover
    (the authors' code floors it the same way); the gradient still moves the raw parameter.
    """

    def __init__(self, init: float = 0.005, levels: int = 1, grad: str = "lsq"):
        super().__init__()
        if not (isinstance(levels, int) and levels >= 1):
            raise ValueError(f"lsq levels must be an integer >= 1, got {levels!r}")
        if grad not in ("lsq", "bit"):
            raise ValueError(f"lsq grad must be 'lsq' or 'bit', got {grad!r}")
        if not (init > 0):
            raise ValueError(f"lsq init step must be > 0, got {init!r}")
        self.levels, self.grad = levels, grad
        self.step = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_sample = x[0].numel() if x.dim() > 1 else x.numel()
        g = 1.0 / math.sqrt(per_sample * self.levels) if self.grad == "lsq" else 1.0
        return _RoundClipStep.apply(x, self.step, self.levels, g)

    def effective_step(self) -> torch.Tensor:
        """The step the forward pass uses: max(step, MIN_STEP)."""
        return self.step.clamp_min(MIN_STEP)

    def extra_repr(self) -> str:
        return f"step={self.step.item():.4g}, levels={self.levels}, grad={self.grad}"
