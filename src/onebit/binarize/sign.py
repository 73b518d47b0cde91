"""The sign function and the straight-through family of gradient estimators.

Every binarizer in onebit uses the same forward pass:

    sign(x) = +1 if x >= 0 else -1        (so sign(0) = +1, and a packed bit is 1 for x >= 0)

and differs only in its backward pass, the surrogate derivative d sign(x)/dx that
the estimator substitutes for the true (zero almost everywhere) derivative.

One autograd Function, :class:`SignWithSurrogate`, carries every estimator: it
saves the input and maps the incoming gradient g to g * s(x), where s is the
estimator's surrogate derivative.  Identity STE saves nothing.

Speed matters here (these run on every activation of every step): sign is built
from copysign (6x faster than torch.where on these CPUs), and the clipped STE uses
the fused hardtanh backward kernel.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .fused import surrogate

# surrogate(x, g) -> g * d sign(x)/dx as the estimator defines it
SurrogateGrad = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = sign(-0.0) = +1, in the dtype of x (no gradient: use an estimator).

    x + 0.0 turns -0.0 into +0.0, then copysign copies the sign bit onto 1.
    """
    return torch.ones_like(x).copysign_(x + 0.0)


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
        return ctx.surrogate(x, grad), None


def sign_ste(x: torch.Tensor, surrogate: Optional[SurrogateGrad] = None) -> torch.Tensor:
    """sign(x) whose backward uses ``surrogate`` (identity STE when None)."""
    return SignWithSurrogate.apply(x, surrogate)


# --- surrogate derivatives (d/dx of the function the estimator pretends sign is) ---

def clipped_ste_grad(c: float) -> SurrogateGrad:
    """Clipped STE (BNN / XNOR-Net, c = 1; BNext, c = 1.5): g * 1{|x| <= c}.

    hardtanh's backward passes g where min < x < max; with the bounds moved one ulp
    outwards (in x's dtype) that is exactly |x| <= c.
    """
    bounds = {dt: torch.nextafter(torch.tensor(c, dtype=dt), torch.tensor(float("inf"), dtype=dt)).item()
              for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}

    def grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        hi = bounds[x.dtype]
        return torch.ops.aten.hardtanh_backward(g, x, -hi, hi)

    return grad


def approx_sign_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """ApproxSign (Bi-Real Net, Eq. 6): g * (2 + 2x) on [-1, 0), g * (2 - 2x) on [0, 1), 0 elsewhere.

    On x86 CPUs in float32, one pass on the engine (:mod:`onebit.binarize.fused`); else torch's ops.
    """
    fused = surrogate("approx_sign", x, g)
    if fused is not None:
        return fused
    return approx_sign_torch(x, g)


def approx_sign_torch(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """approx_sign_grad in torch's ops (any device and dtype; the reference the engine is tested on)."""
    return torch.relu_(1.0 - x.abs()).mul_(g).mul_(2.0)


def reste_grad(o: float, t: float = 1.5, m: float = 0.1) -> SurrogateGrad:
    """ReSTE: derivative of the rectified power function f_o(x) = sign(x) |x|^(1/o).

    - |x| <= m:      the chord slope m^(1/o) / m (finite at 0; the authors' code, m = 0.1);
    - m < |x| <= t:  f_o'(x) = (1/o) |x|^((1 - o)/o);
    - |x| > t:       0 (gradient threshold t, 1.5 in the authors' code).
    With o = 1 this is the clipped STE with c = t.

    On x86 CPUs in float32 the gradient is computed in one pass on the engine
    (:mod:`onebit.binarize.fused`), elsewhere by :func:`reste_grad_torch`.
    """
    torch_grad = reste_grad_torch(o, t, m)

    def grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        fused = surrogate("reste", x, g, o, t, m)
        return fused if fused is not None else torch_grad(x, g)

    return grad


def reste_grad_torch(o: float, t: float = 1.5, m: float = 0.1) -> SurrogateGrad:
    """reste_grad in torch's ops (any device and dtype; the reference the engine is tested on)."""
    flat = m ** (1.0 / o) / m
    expo = (1.0 - o) / o

    def grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        a = x.abs()
        if o == 1.0:  # clipped STE at t
            return g * (a <= t).to(g.dtype)
        inner = a.clamp(min=m).pow_(expo).mul_(1.0 / o)
        inner = torch.where(a <= m, flat, inner)
        return inner.masked_fill_(a > t, 0.0).mul_(g)

    return grad


def rectified_power(x: torch.Tensor, o: float) -> torch.Tensor:
    """f_o(x) = sign(x) |x|^(1/o): the function ReSTE differentiates (used by the indicators)."""
    return sign(x) * x.abs().pow(1.0 / o)


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
