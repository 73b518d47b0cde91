"""Training-time ops on the C++ engine, for x86 CPUs: one-pass surrogate gradients, and the
binary convolution forward that :mod:`onebit.layers.fused_conv` uses.

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
    """Turn the engine's training ops on (the default) or off (torch's ops everywhere)."""
    global _enabled
    _enabled = bool(flag)


def engine_enabled() -> bool:
    """True when the engine's training ops run (CPU float32 tensors; see the module docstring)."""
    return _enabled and _FAST


def surrogate(kind: str, x: torch.Tensor, g: torch.Tensor, o: float = 1.0, t: float = 1.5,
              m: float = 0.1) -> Optional[torch.Tensor]:
    """g * s(x) for ``kind`` "reste" (o, t, m) or "approx_sign", or None where torch should do it."""
    if not engine_enabled() or torch.compiler.is_compiling():
        return None
    if x.device.type != "cpu" or x.dtype != torch.float32 or g.dtype != torch.float32 or x.shape != g.shape:
        return None
    if kind == "reste" and not (m >= _M_MIN and t <= _T_MAX):
        return None
    xs, gs = x.detach().contiguous(), g.detach().contiguous()
    out = _C.surrogate_grad(kind, xs.numpy(), gs.numpy(), float(o), float(t), float(m), "auto",
                            max(1, torch.get_num_threads()))
    return torch.from_numpy(out)


def conv_out_size(hw, kernel, stride, padding, dilation=(1, 1)) -> tuple:
    """(OH, OW) of a conv2d or pooling window over an (H, W) input with zero padding on each side
    (torch's formula, floor mode; <= 0 where torch would refuse)."""
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                 for size, k, s, p, d in zip(hw, kernel, stride, padding, dilation))


def binary_conv2d(xb: torch.Tensor, wb: torch.Tensor, stride, padding, dilation, groups: int) -> torch.Tensor:
    """conv2d(xb, wb) for ±1 float32 CPU tensors by XNOR-popcount: exact integer sums as float32,
    torch's result bit for bit (zero padding contributes 0).  Values other than ±1 are taken by
    their sign (x >= 0 is +1): the caller guarantees signs."""
    out_size = conv_out_size(xb.shape[2:], wb.shape[2:], stride, padding, dilation)
    bits, tapsum = _C.pack_conv_weight(wb.detach().contiguous().numpy())
    kh, kw = wb.shape[2], wb.shape[3]
    y = _C.conv2d(xb.detach().numpy(), bits, tapsum, int(groups), (kh, kw), tuple(stride), tuple(padding),
                  tuple(dilation), out_size, num_threads=max(1, torch.get_num_threads()))
    return torch.from_numpy(y)
