"""The math of one bit: binarizers, gradient estimators, scales and schedules.

Forward, every binarizer computes sign(x) with sign(0) = +1.  They differ in their
backward pass; see :mod:`onebit.binarize.estimators` for the table.  Use them by name:

    >>> from onebit import binarize
    >>> b = binarize.get("reste", o_end=3, schedule="cos")
    >>> binarize.available()
"""
from __future__ import annotations

import torch.nn as nn

from . import estimators, react, scaling  # noqa: F401  (registers the names)
from .estimators import ApproxSign, Binarizer, ClippedSTE, ProgressiveBinarizer, ReSTE, STE
from .react import LearnableBias, RPReLU, RSign
from .registry import available, build, get, register
from .scaling import WEIGHT_SCALES, LearnedStep, center_weight, weight_scale
from .schedules import Schedule, check_progress
from .sign import rectified_power, sign, sign_ste


def set_progress(module: nn.Module, t: float) -> int:
    """Set every schedule inside ``module`` to training progress t in [0, 1].

    Returns how many modules took the call: every module with a ``set_progress`` method, which
    includes every binarizer (those without a schedule ignore it).  This is the only way
    schedules move: there is no global state.
    """
    t = check_progress(t)
    n = 0
    for m in module.modules():
        fn = getattr(m, "set_progress", None)
        if callable(fn):
            fn(t)
            n += 1
    return n


__all__ = [
    "ApproxSign", "Binarizer", "ClippedSTE", "LearnableBias", "LearnedStep", "ProgressiveBinarizer",
    "ReSTE", "RPReLU", "RSign", "STE", "Schedule", "WEIGHT_SCALES", "available", "build",
    "center_weight", "get", "rectified_power", "register", "set_progress", "sign", "sign_ste",
    "weight_scale",
]
