"""Binarizer modules: forward sign(x) (sign(0) = +1), backward one of the papers' estimators.

| name          | backward d/dx                                                     | source                 |
|---------------|-------------------------------------------------------------------|------------------------|
| ``ste``       | 1                                                                 | BinaryConnect          |
| ``clipped_ste``| 1{|x| <= c}  (c = 1 classic, 1.5 BNext)                          | BNN, XNOR-Net, BNext   |
| ``approx_sign``| 2 - 2|x| for |x| < 1, else 0                                     | Bi-Real Net Eq. 6      |
| ``reste``     | d/dx sign(x)|x|^(1/o), chord slope for |x| <= m, 0 for |x| > t     | ReSTE (paper 001)      |
| ``progressive``| identity; forward clamp(w/tau, -1, 1) hardening to sign          | BNext Sec. 4 (weights) |
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .registry import register
from .schedules import SCHEDULES, Schedule, check_progress
from .sign import (_check_positive, approx_sign_grad, clipped_ste_grad, reste_grad, sign,
                   sign_ste)


class Binarizer(nn.Module):
    """Base class: a module mapping x to {-1, +1} with a surrogate gradient.

    ``_grad_fn()`` returns the estimator's surrogate d sign(x)/dx as a function of x
    (None means the identity STE); ``set_progress(t)`` moves any schedule inside to
    training progress t.
    """

    def _grad_fn(self):
        return None

    def set_progress(self, t: float) -> None:
        check_progress(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, self._grad_fn())

    # The surrogate of a parametrised estimator is a closure (``_fn``), rebuilt from the module's
    # own attributes: left out of pickles (closures do not pickle) and rebuilt on loading, so that
    # torch.save(module), pickle and deepcopy work as for any nn.Module.
    def _rebuild(self) -> None:
        pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fn", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._rebuild()


@register("ste")
class STE(Binarizer):
    """sign(x); backward: identity straight-through (dL/dx = dL/dy)."""


@register("clipped_ste")
class ClippedSTE(Binarizer):
    """sign(x); backward: dL/dx = dL/dy * 1{|x| <= c}."""

    def __init__(self, c: float = 1.0):
        super().__init__()
        self.c = _check_positive("clipped_ste threshold c", c)
        self._rebuild()

    def _rebuild(self) -> None:
        self._fn = clipped_ste_grad(self.c)

    def _grad_fn(self):
        return self._fn

    def extra_repr(self) -> str:
        return f"c={self.c:g}"


@register("approx_sign")
class ApproxSign(Binarizer):
    """sign(x); backward: Bi-Real's piecewise quadratic, d/dx = max(0, 2 - 2|x|)."""

    def _grad_fn(self):
        return approx_sign_grad


@register("reste")
class ReSTE(Binarizer):
    """Rectified straight-through estimator (paper 001; exact constants in reference.md).

    Forward sign(x); backward the derivative of f_o(x) = sign(x) |x|^(1/o) (see
    :func:`onebit.binarize.sign.reste_grad`).  ``o`` fixed when given; otherwise o
    follows ``schedule`` from 1 (t = 0) to ``o_end`` (t = 1), advanced by
    :func:`onebit.set_progress`.  ``t`` is the gradient threshold, ``m`` the flat zone.
    """

    def __init__(self, o: Optional[float] = None, o_end: float = 3.0, schedule: str = "cos",
                 t: float = 1.5, m: float = 0.1, power: float = 2.0):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown ReSTE schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if o is not None:
            o_end, schedule = o, "fixed"
        if not (isinstance(o_end, (int, float)) and math.isfinite(o_end) and o_end >= 1):
            raise ValueError(f"ReSTE o must be >= 1 (o = 1 is the clipped STE), got {o_end!r}")
        self.t_threshold = _check_positive("ReSTE gradient threshold t", t)
        self.m = _check_positive("ReSTE flat zone m", m)
        if self.m >= self.t_threshold:
            raise ValueError(f"ReSTE flat zone m={m} must be smaller than the threshold t={t}")
        self.schedule = Schedule(1.0, o_end, schedule, power)
        self.set_progress(0.0)

    def set_progress(self, t: float) -> None:
        self.progress = check_progress(t)
        self.o = self.schedule(t)
        self._rebuild()

    def _rebuild(self) -> None:
        self._fn = reste_grad(self.o, self.t_threshold, self.m)

    def _grad_fn(self):
        return self._fn

    def extra_repr(self) -> str:
        return f"o={self.o:.4g}, schedule={self.schedule}, t={self.t_threshold:g}, m={self.m:g}"


class _IdentityThrough(torch.autograd.Function):
    """Forward: a given value; backward: identity w.r.t. the latent tensor."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor, value: torch.Tensor):
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


BNEXT_SWITCH = math.log(1e-7) / math.log(0.9) / 511  # tau = 0.9^e reaches 1e-7 at e = 152.98 of 0..511


@register("progressive")
class ProgressiveBinarizer(Binarizer):
    """Progressive weight binarization (BNext, after BoolNet; reference.md section 1).

    Forward: clamp(w / tau, -1, 1) while tau >= tau_min, sign(w) afterwards; backward identity.
    tau decays geometrically with progress, tau(t) = tau_min^(t / switch), reaching tau_min
    (the hard switch to sign) at t = switch.  The authors multiply tau by 0.9 per epoch and
    switch at tau < 1e-7, i.e. from epoch 153 of 512: with the trainer's t = epoch / (epochs - 1)
    the default ``switch = log(1e-7) / log(0.9) / 511`` (0.2994) gives tau = 0.9^epoch and that
    epoch, and the same fraction of any other run length.  While training, the latent weights are
    clamped in place to [-clamp, clamp] (1.5 in BNext) before use; no scaling factor (the
    following BN absorbs it).
    """

    def __init__(self, switch: float = BNEXT_SWITCH, tau_min: float = 1e-7, clamp: Optional[float] = 1.5):
        super().__init__()
        if not (0 < switch <= 1):
            raise ValueError(f"progressive switch must be in (0, 1], got {switch!r}")
        if not (0 < tau_min < 1):
            raise ValueError(f"progressive tau_min must be in (0, 1), got {tau_min!r}")
        if clamp is not None:
            _check_positive("progressive clamp", clamp)
        self.switch, self.tau_min, self.clamp = float(switch), float(tau_min), clamp
        self.set_progress(0.0)

    def set_progress(self, t: float) -> None:
        self.progress = check_progress(t)
        self.tau = self.tau_min ** (t / self.switch) if t < self.switch else 0.0

    @property
    def hard(self) -> bool:
        return self.tau < self.tau_min or self.tau == 0.0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.training and self.clamp is not None:
            with torch.no_grad():
                w.clamp_(-self.clamp, self.clamp)
        value = sign(w) if self.hard else (w / self.tau).clamp(-1.0, 1.0)
        return _IdentityThrough.apply(w, value.detach())

    def extra_repr(self) -> str:
        return f"tau={self.tau:.3g}, switch={self.switch:g}, tau_min={self.tau_min:g}, clamp={self.clamp}"
