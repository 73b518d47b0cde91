"""Schedules driven by training progress t in [0, 1].

A schedule is a pure function of t: nothing global, nothing hidden.  The trainer
(or the user) calls :func:`onebit.set_progress` with t = epoch / (epochs - 1), so that the last
epoch runs at t = 1 (the authors' code uses epoch / epochs, whose o never quite reaches o_end), and every
module that owns a schedule recomputes its value from t.

ReSTE's progressive o (paper 001, appendix Tables 2-3), rising from ``start`` to ``end``:

- ``cos`` (the authors' code; default): o(t) = start + (end - start) (1 - cos(pi t / 2))
- ``linear``:                            o(t) = start + (end - start) t
- ``power`` (the appendix's "exp"-like): o(t) = start + (end - start) t^p, p = 2 by default
- ``fixed``:                             o(t) = end for every t  (Table 2's fixed o)

The linear and power forms are onebit's reading of the appendix; the authors'
code only has the cosine form.
"""
from __future__ import annotations

import math

SCHEDULES = ("cos", "linear", "power", "fixed")


def check_progress(t: float) -> float:
    if not isinstance(t, (int, float)) or not (0.0 <= float(t) <= 1.0):
        raise ValueError(f"progress t must be a number in [0, 1], got {t!r}")
    return float(t)


class Schedule:
    """Value that moves from ``start`` (t = 0) to ``end`` (t = 1) along ``kind``."""

    def __init__(self, start: float, end: float, kind: str = "cos", power: float = 2.0):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")
        if power <= 0:
            raise ValueError(f"schedule power must be > 0, got {power!r}")
        self.start, self.end, self.kind, self.power = float(start), float(end), kind, float(power)

    def __call__(self, t: float) -> float:
        t = check_progress(t)
        span = self.end - self.start
        if self.kind == "fixed":
            return self.end
        if self.kind == "cos":
            return self.start + span * (1.0 - math.cos(math.pi * t / 2.0))
        if self.kind == "linear":
            return self.start + span * t
        return self.start + span * t**self.power

    def __repr__(self) -> str:
        extra = f", power={self.power:g}" if self.kind == "power" else ""
        return f"{self.kind}({self.start:g}->{self.end:g}{extra})"
