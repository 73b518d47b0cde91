"""The sign function and the straight-through family of gradient estimators.

Every binarizer in onebit uses the same forward pass:

    sign(x) = +1 if x >= 0 else -1        (so sign(0) = +1, and a packed bit is 1 for x >= 0)

and differs only in its backward pass, the surrogate derivative d sign(x)/dx that
the estimator substitutes for the true (zero almost everywhere) derivative.

One autograd Function, :class:`SignWithSurrogate`, carries every estimator: it
saves the input and multiplies the incoming gradient by the estimator's
surrogate derivative, evaluated in one expression.  Identity STE saves nothing.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

SurrogateGrad = Callable[[torch.Tensor], torch.Tensor]


def sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1, in the dtype of x (no gradient: use an estimator)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class SignWithSurrogate(torch.autograd.Function):
    """Forward: sign(x).  Backward: grad * surrogate(x), or grad itself if surrogate is None."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Optional[SurrogateGrad]):
        ctx.surrogate = surrogate
        if surrogate is not None:
            ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.surrogate is None:
            return grad, None
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate(x), None


def sign_ste(x: torch.Tensor, surrogate: Optional[SurrogateGrad] = None) -> torch.Tensor:
    """sign(x) whose backward uses ``surrogate`` (identity STE when None)."""
    return SignWithSurrogate.apply(x, surrogate)


# --- surrogate derivatives (d/dx of the function the estimator pretends sign is) ---

def clipped_ste_grad(c: float) -> SurrogateGrad:
    """Clipped STE (BNN / XNOR-Net, c = 1; BNext, c = 1.5): 1{|x| <= c}."""

    def grad(x: torch.Tensor) -> torch.Tensor:
        return (x.abs() <= c).to(x.dtype)

    return grad


def approx_sign_grad(x: torch.Tensor) -> torch.Tensor:
    """ApproxSign (Bi-Real Net, Eq. 6): 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere."""
    return (2.0 - 2.0 * x.abs()).clamp_(min=0.0)


def reste_grad(o: float, t: float = 1.5, m: float = 0.1) -> SurrogateGrad:
    """ReSTE: derivative of the rectified power function f_o(x) = sign(x) |x|^(1/o).

    - |x| <= m:      the chord slope m^(1/o) / m (finite at 0; the authors' code, m = 0.1);
    - m < |x| <= t:  f_o'(x) = (1/o) |x|^((1 - o)/o);
    - |x| > t:       0 (gradient threshold t, 1.5 in the authors' code).
    With o = 1 this is the clipped STE with c = t.
    """
    flat = m ** (1.0 / o) / m
    expo = (1.0 - o) / o

    def grad(x: torch.Tensor) -> torch.Tensor:
        a = x.abs()
        inner = a.clamp(min=m).pow(expo).mul_(1.0 / o)
        inner = torch.where(a <= m, flat, inner)
        return inner.masked_fill_(a > t, 0.0)

    return grad


def rectified_power(x: torch.Tensor, o: float) -> torch.Tensor:
    """f_o(x) = sign(x) |x|^(1/o): the function ReSTE differentiates (used by the indicators)."""
    return sign(x) * x.abs().pow(1.0 / o)


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
