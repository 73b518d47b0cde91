"""One-pass surrogate gradients on the C++ engine, for training on x86 CPUs.

The torch versions of ReSTE's and ApproxSign's backward (:mod:`onebit.binarize.sign`) make
several passes over each activation, each allocating a tensor; on CPU, ReSTE's took 28% of a
binary ResNet-20 training step.  ``onebit._engine.surrogate_grad`` reads x and g once and writes
g * s(x) with AVX-512 or AVX2 (same bits on both; within a few float32 ulps of torch's pow).

:func:`surrogate` returns None wherever the torch version should run instead: tensors off the
CPU or not float32, a CPU without AVX2, inside torch.compile, or after ``use_engine(False)``.
"""
from __future__ import annotations

from typing import Optional

import torch

try:
    from .. import _engine as _C
    _FAST = _C.best_path() in ("avx512", "avx2")
except ImportError:  # pragma: no cover - the engine is part of every install
    _C, _FAST = None, False

_enabled = True
# ReSTE's range the kernel's power handles (normal floats only); outside it, torch's version runs
_M_MIN, _T_MAX = 2.0 ** -100, 2.0 ** 100


def use_engine(flag: bool) -> None:
    """Turn the engine's surrogate gradients on (the default) or off (torch's ops everywhere)."""
    global _enabled
    _enabled = bool(flag)


def engine_enabled() -> bool:
    """True when CPU float32 backward passes of ReSTE and ApproxSign run on the engine."""
    return _enabled and _FAST


def surrogate(kind: str, x: torch.Tensor, g: torch.Tensor, o: float = 1.0, t: float = 1.5,
              m: float = 0.1) -> Optional[torch.Tensor]:
    """g * s(x) for ``kind`` "reste" (o, t, m) or "approx_sign", or None where torch should do it."""
    if not (_enabled and _FAST) or torch.compiler.is_compiling():
        return None
    if x.device.type != "cpu" or x.dtype != torch.float32 or g.dtype != torch.float32 or x.shape != g.shape:
        return None
    if kind == "reste" and not (m >= _M_MIN and t <= _T_MAX):
        return None
    xs, gs = x.detach().contiguous(), g.detach().contiguous()
    out = _C.surrogate_grad(kind, xs.numpy(), gs.numpy(), float(o), float(t), float(m), "auto",
                            max(1, torch.get_num_threads()))
    return torch.from_numpy(out)
