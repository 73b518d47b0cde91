"""Thin Python wrappers around the C++ XNOR-popcount engine (``onebit._engine``).

Arrays cross as NumPy buffers: torch tensors are passed as ``tensor.numpy()`` (zero-copy for
contiguous float32 CPU tensors).  Every call takes

- ``path``: ``"auto"`` (the fastest the CPU supports), ``"avx512"`` (AVX-512 VPOPCNTDQ), ``"avx2"``
  (vpshufb nibble lookup) or ``"portable"`` (scalar 64-bit popcount); a path the CPU lacks raises
  ValueError.  :func:`set_path` changes the default; the environment variable ONEBIT_ENGINE_PATH
  sets it when this module is imported (the CLI: ``--engine-path`` of bench, eval and pack).
- ``num_threads``: engine threads; default :func:`get_num_threads`, i.e. ``torch.get_num_threads()``
  unless :func:`set_num_threads` set one.  The work runs on the team of the OpenMP runtime torch has
  loaded (its idle threads take it at once instead of competing with it for the cores), or on the
  engine's own std::thread pool when there is none: see :func:`thread_backend`.

Bit convention: a bit is 1 for +1 (x + shift >= 0, so 0.0 and -0.0 give +1) and 0 for -1; unused
bits of the last word of a row are 0.  Dot products come out as ``K - 2 popcount(a xor b)``.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..binarize.fused import conv_out_size

try:
    from .. import _engine as _C
except ImportError as e:  # pragma: no cover - exercised only when the extension is missing
    raise ImportError(
        "onebit's C++ engine (onebit._engine) is not built. Install the package with "
        "`pip install -e .` (or build in place: `python setup.py build_ext --inplace`)."
    ) from e

PATHS = ("auto", "avx512", "avx2", "portable")
_AVAILABLE = tuple(_C.available_paths())  # fixed for the process: the CPU does not change
_LAYOUT = {p: _C.weight_layout(p) for p in ("auto",) + _AVAILABLE}

_num_threads: Optional[int] = None
_default_path: Optional[str] = None  # None: ONEBIT_ENGINE_PATH, read when a call needs it, else 'auto'


# --- settings ---------------------------------------------------------------------------------

def set_num_threads(n: Optional[int]) -> None:
    """Engine threads for every later call; None goes back to ``torch.get_num_threads()``."""
    global _num_threads
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"num_threads must be a positive integer or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    """Threads the engine uses when a call does not say: set_num_threads(n), else torch's."""
    return _num_threads if _num_threads is not None else max(1, torch.get_num_threads())


def thread_backend() -> str:
    """Where the engine's parallel work runs: ``'openmp:<library>'`` (the OpenMP runtime already
    loaded, torch's) or ``'pool'`` (the engine's own threads)."""
    return _C.thread_backend()


def set_thread_backend(name: str) -> None:
    """``'auto'``: the loaded OpenMP runtime when there is one (the default); ``'pool'``: always the
    engine's own std::thread pool (also chosen by the environment variable ONEBIT_ENGINE_THREADS=pool)."""
    if name not in ("auto", "pool"):
        raise ValueError(f"unknown engine thread backend {name!r}; allowed: 'auto', 'pool'")
    _C.set_thread_backend(name)


def set_path(path: str) -> None:
    """Default kernel path for every later call ('auto', 'avx512', 'avx2' or 'portable')."""
    global _default_path
    _check_path(path)
    _default_path = path


def get_path() -> str:
    global _default_path
    if _default_path is None:
        _default_path = _env_path()  # raises on a bad value, until set_path replaces it
    return _default_path


def cpu_features() -> dict:
    """What the CPU offers the engine: {'popcnt', 'avx2', 'avx512_vpopcntdq', 'x86_64'} -> bool."""
    return dict(_C.cpu_features())


def available_paths() -> list[str]:
    """Paths this CPU can run, fastest first (always ends with 'portable')."""
    return list(_AVAILABLE)


def best_path() -> str:
    """The path 'auto' resolves to."""
    return _C.best_path()


def weight_layout(path: Optional[str] = None) -> str:
    """'split' if ``path``'s convolution kernels read nibble-split weights (see split_weights)."""
    return _LAYOUT[_resolve(path)]


# --- helpers ----------------------------------------------------------------------------------

def _check_path(path: str) -> None:
    if path == "auto" or path in _AVAILABLE:
        return
    if path not in PATHS:
        raise ValueError(f"unknown engine path {path!r}; allowed: {', '.join(PATHS)}")
    if path not in _AVAILABLE:
        raise ValueError(f"engine path {path!r} is not supported by this CPU; available: "
                         f"{', '.join(available_paths())}")


def _env_path() -> str:
    """The default path from ONEBIT_ENGINE_PATH ('auto' when unset or empty); ValueError if bad (when a
    call needs the path, not at import: set_path / --engine-path override a bad value)."""
    path = os.environ.get("ONEBIT_ENGINE_PATH", "").strip() or "auto"
    try:
        _check_path(path)
    except ValueError as e:
        raise ValueError(f"ONEBIT_ENGINE_PATH: {e}") from None
    return path


def path_in_use() -> str:
    """The kernel path calls take by default: the one set (set_path, ONEBIT_ENGINE_PATH), with
    'auto' resolved to best_path()."""
    path = get_path()
    return best_path() if path == "auto" else path


def _resolve(path: Optional[str]) -> str:
    path = get_path() if path is None else path
    _check_path(path)
    return path


def _threads(n: Optional[int]) -> int:
    if n is None:
        return get_num_threads()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_threads must be a positive integer, got {n!r}")
    return n


def as_f32(x, contiguous: bool = True) -> np.ndarray:
    """A float32 NumPy view (zero-copy where possible) of a tensor or array."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype != torch.float32:
            x = x.float()
        if contiguous:
            x = x.contiguous()
        return x.numpy()
    a = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(a) if contiguous else a


def as_u64(x) -> np.ndarray:
    """A uint64 NumPy view of packed words (torch int64 / uint64 tensors, or arrays)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous()
        if x.dtype not in (torch.int64, torch.uint64):
            raise TypeError(f"packed words must be int64 or uint64, got {x.dtype}")
        x = x.view(torch.int64).numpy()
    a = np.ascontiguousarray(x)
    if a.dtype not in (np.uint64, np.int64):
        raise TypeError(f"packed words must be uint64 (or int64), got {a.dtype}")
    return a.view(np.uint64)


def _opt_f32(x) -> Optional[np.ndarray]:
    return None if x is None else as_f32(x).reshape(-1)


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


# --- kernels ----------------------------------------------------------------------------------

class PackedActivations(NamedTuple):
    """The signs of an NCHW activation, packed channels-last as :func:`pack_nchw` leaves them:
    ``words`` uint64 [N, H, W, ceil(channels / 64)] (bit c % 64 of word c // 64 is 1 for +1), the
    form in which :func:`conv2d` hands its result to the next binary layer (``emit='bits'``) and
    takes its input."""
    words: np.ndarray
    channels: int

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """The NCHW shape of the activation these bits stand for."""
        n, h, w, _ = self.words.shape
        return (n, self.channels, h, w)


def pack_rows(a, shift=None, *, path: Optional[str] = None, num_threads: Optional[int] = None) -> np.ndarray:
    """float32 [M, K] -> uint64 [M, ceil(K/64)]: bit k of row m is 1 iff a[m, k] + shift[k] >= 0."""
    return _C.pack_rows(as_f32(a), _opt_f32(shift), _resolve(path), _threads(num_threads))


def pack_nchw(x, shift=None, groups: int = 1, *, path: Optional[str] = None,
              num_threads: Optional[int] = None) -> np.ndarray:
    """float32 [N, C, H, W] (any strides) -> uint64 [N, H, W, groups * ceil(C/groups/64)], channels-last."""
    return _C.pack_nchw(as_f32(x, contiguous=False), _opt_f32(shift), int(groups), _resolve(path),
                        _threads(num_threads))


def bgemm(a, b, k: int, *, path: Optional[str] = None, num_threads: Optional[int] = None,
          kernel: str = "auto") -> np.ndarray:
    """Packed A [M, W], B [N, W] over k bits -> int32 [M, N] = k - 2 popcount(A_m xor B_n).

    Both operands' bits past ``k`` must be 0 (as pack_rows leaves them).  ``kernel``: 'rows'
    (vector along K), 'panels' (vector across rows of A) or 'auto'.
    """
    return _C.bgemm(as_u64(a), as_u64(b), int(k), _resolve(path), _threads(num_threads), kernel)


def pack_conv_weight(w, align: int = 8) -> Tuple[np.ndarray, np.ndarray]:
    """Binary weights [F, C/groups, KH, KW] (bit: w >= 0) -> (uint64 bits [F, words], int32 tapsum [F, KH*KW]).

    Words are tap-major, channel-minor (word (kh*KW + kw) * ceil(Cg/64) + j holds channels 64j..64j+63),
    padded with zero words to a multiple of ``align``; tapsum[f, tap] = sum over channels of sign(w).
    """
    return _C.pack_conv_weight(as_f32(w), int(align))


def split_weights(wbits, kw: int) -> np.ndarray:
    """Nibble-split copy [F, 2 kw] of packed weights (the layout of the AVX2 convolution kernel)."""
    return _C.split_weights(as_u64(wbits), int(kw))


EMITS = ("float", "bits", "both")


def conv2d(x, wbits, tapsum, *, groups: int = 1, kernel_size, stride=1, padding=0, dilation=1,
           out_size: Optional[Sequence[int]] = None, shift=None, scale=None, bias=None,
           accumulate: bool = False, wsplit=None, residual=None, out=None, rprelu=None, emit: str = "float",
           out_shift=None, pre_relu: bool = False, path: Optional[str] = None,
           num_threads: Optional[int] = None):
    """Binary convolution of float32 NCHW ``x`` (any strides) against packed weights.

    Activations are binarized as x + shift[c] >= 0; ``x`` may also be :class:`PackedActivations`
    (the previous layer's ``emit='bits'`` output: no float input and no packing pass; ``shift`` is
    then already applied).  ``padding`` is (top, left); the output size defaults to the
    symmetric-padding size.  Returns float32 NCHW ``acc * scale[f] + bias[f]``, or with
    ``accumulate=True`` the exact int32 accumulators (padded taps contribute 0).
    ``residual`` (C-contiguous float32, the output's shape) is added in the epilogue, rounded as
    ``(acc * scale + bias) + residual`` computed in two steps; ``out`` (same kind of array, it may
    be the residual itself, not the input) receives the result in place of a new array.
    ``pre_relu=True`` applies torch's ReLU to ``acc * scale + bias`` first (y < 0 -> 0; -0 and NaN
    pass), before the residual.
    ``rprelu`` (float32 [3, F]: gamma, slope, zeta) applies RPReLU last, as ``RPReLU`` does in torch:
    ``t = y - gamma; (t if t > 0 else slope * t) + zeta``.
    ``emit``: ``'float'`` (the float output), ``'bits'`` (only the signs of that output as the next
    binary layer reads them, y + out_shift[f] >= 0, as :class:`PackedActivations`) or ``'both'``
    (a tuple (float, bits)).  The bits equal ``pack_nchw(float output, out_shift)``.
    """
    if emit not in EMITS:
        raise ValueError(f"unknown emit {emit!r}; allowed: {', '.join(EMITS)}")
    if out_shift is not None and emit == "float":
        raise ValueError("out_shift is the next layer's threshold: it goes with emit='bits' or 'both'")
    if isinstance(x, PackedActivations):
        xa, xbits, in_ch = None, as_u64(x.words), int(x.channels)
        if xbits.ndim != 4:
            raise ValueError(f"PackedActivations.words must be 4-D (N, H, W, words), got shape {xbits.shape}")
        if shift is not None:
            raise ValueError("shift binarizes a float input; PackedActivations are binarized already "
                             "(give the threshold as out_shift to the layer that emitted them)")
        n, h, w = xbits.shape[:3]
    else:
        xa, xbits, in_ch = as_f32(x, contiguous=False), None, -1
        if xa.ndim != 4:
            raise ValueError(f"conv2d expects a 4-D input (N, C, H, W), got shape {xa.shape}")
        h, w = xa.shape[2], xa.shape[3]
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    if out_size is None:
        out_size = conv_out_size((h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    oh, ow = _pair(out_size)
    ws = None if wsplit is None else as_u64(wsplit)
    res = None if residual is None else (residual.detach().numpy() if isinstance(residual, torch.Tensor) else residual)
    o = None if out is None else (out.detach().numpy() if isinstance(out, torch.Tensor) else out)
    y = _C.conv2d(xa, as_u64(wbits), np.ascontiguousarray(tapsum, dtype=np.int32), int(groups), (kh, kw),
                  (sh, sw), (ph, pw), (dh, dw), (oh, ow), _opt_f32(shift), _opt_f32(scale), _opt_f32(bias),
                  bool(accumulate), _resolve(path), _threads(num_threads), ws, res, o,
                  None if rprelu is None else as_f32(rprelu),
                  xbits, in_ch, emit != "float", emit != "bits", _opt_f32(out_shift), None, False, bool(pre_relu))
    f = as_u64(wbits).shape[0]
    if emit == "bits":
        return PackedActivations(y, f)
    if emit == "both":
        return y[0], PackedActivations(y[1], f)
    return y


def max_pool2d(x, kernel_size, stride=None, padding=0, *, path: Optional[str] = None,
               num_threads: Optional[int] = None) -> np.ndarray:
    """Max pooling of float32 NCHW ``x``, bit for bit torch's max_pool2d (no dilation, floor mode)."""
    xa = as_f32(x)
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    oh, ow = conv_out_size(xa.shape[2:], (kh, kw), (sh, sw), (ph, pw))
    return _C.maxpool2d(xa, (kh, kw), (sh, sw), (ph, pw), (oh, ow), _resolve(path), _threads(num_threads))


def avg_pool2d(x, kernel_size, stride=None, *, path: Optional[str] = None,
               num_threads: Optional[int] = None) -> np.ndarray:
    """Average pooling of float32 NCHW ``x`` without padding, bit for bit torch's avg_pool2d."""
    xa = as_f32(x)
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    oh, ow = (xa.shape[2] - kh) // sh + 1, (xa.shape[3] - kw) // sw + 1
    return _C.avgpool2d(xa, (kh, kw), (sh, sw), (oh, ow), _resolve(path), _threads(num_threads))


def linear(x, wbits, k: int, *, shift=None, scale=None, bias=None, accumulate: bool = False,
           wsplit=None, kernel: str = "auto", path: Optional[str] = None,
           num_threads: Optional[int] = None) -> np.ndarray:
    """Binary linear layer: float32 [M, k] against packed weights [N, >= ceil(k/64)] -> float32 [M, N]
    ``acc * scale[n] + bias[n]`` (or int32 accumulators with ``accumulate=True``)."""
    ws = None if wsplit is None else as_u64(wsplit)
    return _C.linear(as_f32(x), as_u64(wbits), int(k), _opt_f32(shift), _opt_f32(scale), _opt_f32(bias),
                     bool(accumulate), _resolve(path), _threads(num_threads), kernel, ws)
