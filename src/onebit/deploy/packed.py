"""Packed (bit-level) twins of the binary layers, and :func:`pack` for whole models.

    model = onebit.create_model("bireal_resnet20").eval()
    fast = onebit.deploy.pack(model)          # a deep copy; `model` is untouched
    fast(x)                                    # same logits, XNOR-popcount convolutions

A :class:`PackedBinaryConv2d` / :class:`PackedBinaryLinear` holds the weight signs as bits (uint64
words stored in an int64 buffer), one float ``scale`` and ``bias`` per output channel and, for an
RSign input, the per-channel threshold shift.  Its forward binarizes the input exactly as the
training layer does (bit = x + shift >= 0), runs the C++ engine and returns

    y = acc * scale[f] + bias[f],    acc = sum over in-image taps and channels of sign(x) sign(w)

where ``scale`` is the layer's alpha (per channel, per tensor, or 1) and ``bias`` its bias.  The
integer accumulators are exact; y equals the training layer's output up to float rounding (the
training layer sums alpha * (+-1) terms in float32).  An eval-mode BatchNorm right after the
layer can be folded into scale and bias (``pack(..., fold_bn=True)``).  Packed layers are for
inference: they compute in float32 on the CPU (inputs elsewhere are copied there and the result
back, in the input's floating dtype) and pass no gradient.

What pack() replaces: BinaryConv2d and BinaryLinear whose inputs and weights are both binary and
whose binarizers it can reproduce bit for bit (any sign estimator: STE, clipped STE, ApproxSign,
ReSTE, a hard progressive binarizer; RSign over one of those; for the weights, anything whose
output is exactly +-1).  It keeps as they are: layers with real inputs or real weights (nothing to
pack), and, with a :class:`PackWarning`, binary layers it does not know (other BinaryLayer classes,
subclasses overriding forward or a method it calls, unknown binarizers, weights not exactly +-1),
layers with forward hooks, and layers of classes from neither torch nor onebit that are leaves or hold
parameters of their own (kept in float32 PyTorch): never silently wrong.
"""
from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings
from collections import Counter
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..binarize.estimators import Binarizer, ProgressiveBinarizer
from ..binarize.fused import conv_out_size
from ..binarize.react import LearnableBias, RPReLU, RSign
from ..binarize.scaling import center_weight, weight_scale
from ..layers.binary import BinaryConv2d, BinaryLayer, BinaryLinear
from . import engine


class PackWarning(UserWarning):
    """A layer pack() cannot reproduce exactly or does not know, and therefore leaves unpacked."""


class NotPackable(Exception):
    """Raised by the from_layer constructors; ``real`` is True for real inputs or weights."""

    def __init__(self, msg: str, real: bool = False):
        super().__init__(msg)
        self.real = real


# --- what the binarizers compute ------------------------------------------------------------

def _is_sign(b: nn.Module) -> bool:
    """True if ``b``'s forward is exactly sign(x) (sign(0) = +1) in eval mode."""
    if isinstance(b, ProgressiveBinarizer):
        return type(b).forward is ProgressiveBinarizer.forward and b.hard
    return isinstance(b, Binarizer) and type(b).forward is Binarizer.forward


def _input_shift(b: Optional[nn.Module], channels: int, dims: Tuple[int, ...]) -> Optional[torch.Tensor]:
    """The per-channel shift b of an input binarizer computing sign(x + b) (None: plain sign)."""
    if b is None:
        raise NotPackable("real-valued inputs", real=True)
    if _is_sign(b):
        return None
    if type(b) is RSign and type(b.shift) is LearnableBias and _is_sign(b.estimator):
        if b.shift.dim not in dims:
            raise NotPackable(f"RSign over dim {b.shift.dim}, expected the channel dim {dims[0]}")
        shift = b.shift.bias.detach().to(torch.float32).cpu().reshape(-1)
        if shift.numel() != channels:
            raise NotPackable(f"RSign has {shift.numel()} shifts for {channels} input channels")
        return shift.clone()
    est = getattr(b, "estimator", None)
    what = type(b).__name__ + (f"({type(est).__name__})" if est is not None else "")
    raise NotPackable(f"input binarizer {what} is not a plain sign / RSign of a sign estimator")


def _weight_signs(layer: BinaryLayer) -> Tuple[torch.Tensor, torch.Tensor]:
    """(signs as +-1 float32, scale [out] float32) with binary_weight() == signs * scale."""
    if layer.weight_binarizer is None:
        raise NotPackable("real-valued weights", real=True)
    w = layer.weight.detach().to(torch.float32).cpu()
    with torch.no_grad():
        wb = layer.weight_binarizer(center_weight(w) if layer.center else w).detach().to(torch.float32)
        if wb.shape != w.shape or not bool(((wb == 1) | (wb == -1)).all()):
            raise NotPackable(f"weight binarizer {type(layer.weight_binarizer).__name__} does not give exactly "
                              f"+-1 (e.g. a progressive binarizer before its switch to sign)")
        alpha = weight_scale(w, layer.scale)
    out = w.shape[0]
    if alpha is None:
        scale = torch.ones(out)
    else:
        scale = alpha.reshape(-1).to(torch.float32).expand(out).clone() if alpha.numel() == 1 else \
            alpha.reshape(out).to(torch.float32).clone()
    return wb, scale


def _bias(layer: nn.Module, out: int) -> torch.Tensor:
    b = getattr(layer, "bias", None)
    return torch.zeros(out) if b is None else b.detach().to(torch.float32).cpu().clone()


def _check_eval(layer: nn.Module, name: str = "") -> None:
    if layer.training:
        label = f"{name!r} ({type(layer).__name__})" if name else type(layer).__name__
        raise ValueError(f"cannot pack {label}: it is in training mode (batch statistics, binarizer "
                         f"schedules); call model.eval() first")


HARMLESS_OVERRIDES = ("__init__", "extra_repr", "reset_parameters")  # they do not change what forward computes


def _check_methods(layer: nn.Module, base: type) -> None:
    """NotPackable if ``layer``'s class (``base`` or a subclass) or the instance itself replaces a
    method of ``base`` (forward, binarize_input, weight_parts, ...): from_layer packs what ``base``'s
    own methods compute.  A subclass with only its own constructor is packed."""
    replaced = [name for cls in type(layer).__mro__[:type(layer).__mro__.index(base)] for name in vars(cls)]
    replaced += [name for name, v in vars(layer).items() if callable(v) and not isinstance(v, nn.Module)]
    for name in replaced:
        attr = inspect.getattr_static(base, name, None)
        if name not in HARMLESS_OVERRIDES and (callable(attr) or isinstance(attr, (property, staticmethod,
                                                                                    classmethod))):
            raise NotPackable(f"{type(layer).__name__} overrides {base.__name__}'s {name}")


def _hook_kinds(m: nn.Module) -> str:
    """What forward hooks ``m`` itself has ('forward hooks', 'forward pre-hooks', both; '' if none):
    hooks a module pack() replaces or bypasses would silently lose."""
    kinds = [k for k, d in (("forward pre-hooks", m._forward_pre_hooks), ("forward hooks", m._forward_hooks)) if d]
    return " and ".join(kinds)


def _check_hooks(layer: nn.Module) -> None:
    kinds = _hook_kinds(layer)
    if kinds:
        raise NotPackable(f"it has {kinds}, which its packed twin would not run")


def _input_array(x: torch.Tensor) -> np.ndarray:
    """x as a float32 NumPy array on the CPU, zero-copy (any strides) when it already is one."""
    if x.dtype is torch.float32 and x.device.type == "cpu" and not x.requires_grad:
        return x.numpy()
    return engine.as_f32(x, contiguous=False)


def _output(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The engine's float32 result on x's device, in x's floating dtype (float32 for the usual input)."""
    if x.dtype != torch.float32 and x.is_floating_point():
        y = y.to(x.dtype)
    return y if x.device.type == "cpu" else y.to(x.device)


def _word_mask(k: int) -> np.ndarray:
    """uint64 [ceil(k/64)]: the low k bits set (all words full but the last)."""
    mask = np.full((k + 63) // 64, np.iinfo(np.uint64).max, dtype=np.uint64)
    if k % 64:
        mask[-1] = np.uint64((1 << (k % 64)) - 1)
    return mask


class _Packed(nn.Module):
    """Shared buffers, and the NumPy views the engine is called with (cached until a buffer changes)."""

    weight_bits: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor
    shift: Optional[torch.Tensor]

    def _init_buffers(self, bits: np.ndarray, scale: torch.Tensor, bias: torch.Tensor,
                      shift: Optional[torch.Tensor]) -> None:
        self.register_buffer("weight_bits", torch.from_numpy(np.ascontiguousarray(bits).view(np.int64)).clone())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())
        self.register_buffer("bias", bias.to(torch.float32).contiguous())
        self.register_buffer("shift", None if shift is None else shift.to(torch.float32).contiguous())
        self._cache: dict = {}

    def _reduction_words(self) -> int:
        raise NotImplementedError

    def _valid_bits(self) -> np.ndarray:
        """uint64 [reduction words]: the bits of a weight row that hold weights; the engine needs
        the others zero (it XORs and counts whole words against zero-tailed activations)."""
        raise NotImplementedError

    def _extra_arrays(self) -> dict:
        return {}

    def _arrays(self, path: str) -> dict:
        """NumPy views of the buffers for the engine (and the nibble-split weights where ``path``
        reads them); rebuilt when a buffer is replaced or modified in place (load_state_dict,
        fold_bn, .to()).  The key is (id, version) per buffer; the cache holds the buffers
        themselves, so no id can be reused while it is cached."""
        key = [0] * (2 * len(self._buffers))
        for i, t in enumerate(self._buffers.values()):
            if t is not None:
                key[2 * i], key[2 * i + 1] = id(t), t._version
        cache = self._cache
        if cache.get("key") != key:
            cache.clear()
            cache["key"] = key
            cache["refs"] = tuple(self._buffers.values())
            cache["bits"] = engine.as_u64(self.weight_bits)
            cache["scale"] = engine.as_f32(self.scale)
            cache["bias"] = engine.as_f32(self.bias)
            cache["shift"] = None if self.shift is None else engine.as_f32(self.shift)
            cache.update(self._extra_arrays())
        if engine.weight_layout(path) == "split":
            if "wsplit" not in cache:
                cache["wsplit"] = engine.split_weights(cache["bits"], self._reduction_words())
            return cache
        if "wsplit" in cache:
            cache = dict(cache, wsplit=None)
        return cache

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): drop the cached views
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):  # pickle / deepcopy / torch.save: the cache (engine objects) is rebuilt on use
        state = self.__dict__.copy()
        state["_cache"] = {}
        state.pop("_resolved", None)
        return state

    def fold_bn(self, bn: nn.Module) -> None:
        """Fold an eval-mode BatchNorm that directly follows this layer into scale and bias."""
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"fold_bn expects a BatchNorm, got {type(bn).__name__}")
        if bn.training or bn.running_mean is None or bn.running_var is None:
            raise ValueError("fold_bn needs an eval-mode BatchNorm with running statistics")
        if bn.num_features != self.scale.numel():
            raise ValueError(f"BatchNorm has {bn.num_features} features, the layer {self.scale.numel()} outputs")
        var = bn.running_var.detach().double().cpu()
        inv = 1.0 / torch.sqrt(var + bn.eps)
        if bn.weight is not None:
            inv = inv * bn.weight.detach().double().cpu()
        beta = bn.bias.detach().double().cpu() if bn.bias is not None else torch.zeros_like(inv)
        mean = bn.running_mean.detach().double().cpu()
        scale = self.scale.double().cpu() * inv
        bias = (self.bias.double().cpu() - mean) * inv + beta
        self.scale = scale.to(torch.float32).to(self.scale.device)
        self.bias = bias.to(torch.float32).to(self.bias.device)


class PackedBinaryConv2d(_Packed):
    """Bit-packed twin of a binary-input, binary-weight :class:`BinaryConv2d` (eval mode).

    forward(x: float (N, C, H, W), any memory format) -> float32 (N, F, OH, OW), equal to the
    training layer's output.  Buffers: ``weight_bits`` (uint64 words as int64 [F, words]),
    ``tapsum`` (int32 [F, KH*KW], sum of weight signs per tap: the padding correction), ``scale``,
    ``bias`` (float32 [F]) and ``shift`` (float32 [C] RSign threshold shift, or None).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Tuple[int, int], stride: Tuple[int, int],
                 padding: Union[str, Tuple[int, int]], dilation: Tuple[int, int], groups: int,
                 weight_bits: np.ndarray, tapsum: np.ndarray, scale: torch.Tensor, bias: torch.Tensor,
                 shift: Optional[torch.Tensor] = None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = tuple(kernel_size), tuple(stride), tuple(dilation)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self._init_buffers(weight_bits, scale, bias, shift)
        # derived from weight_bits: not in the state dict, recomputed by load_state_dict
        self.register_buffer("tapsum", torch.from_numpy(np.ascontiguousarray(tapsum, dtype=np.int32)).clone(),
                             persistent=False)
        self._plans: dict = {}  # input shape -> geometry (not state: depends on the input only)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        taps, cg = self.kernel_size[0] * self.kernel_size[1], self.in_channels // self.groups
        wpt = (cg + 63) // 64
        bits = self.weight_bits.detach().cpu().contiguous()
        if bits.dim() == 2 and bits.shape[0] == self.out_channels and bits.shape[1] >= taps * wpt:
            # tapsum[f, tap] = (+1 bits) - (-1 bits) = 2 popcount - Cg (unused bits are 0)
            words = bits[:, :taps * wpt].numpy().view(np.uint8).reshape(self.out_channels, taps, wpt * 8)
            ones = np.unpackbits(words, axis=-1).sum(-1, dtype=np.int32)
            self.tapsum = torch.from_numpy(2 * ones - cg).to(self.tapsum.device)

    @classmethod
    def from_layer(cls, layer: BinaryConv2d, name: str = "") -> "PackedBinaryConv2d":
        """Pack a trained BinaryConv2d in eval mode (ValueError in training mode, NotPackable if
        it cannot be reproduced exactly)."""
        if not isinstance(layer, BinaryConv2d):
            raise TypeError(f"expected a BinaryConv2d, got {type(layer).__name__}")
        _check_eval(layer, name)
        _check_methods(layer, BinaryConv2d)
        if layer.padding_mode != "zeros":
            raise NotPackable(f"padding_mode {layer.padding_mode!r} (only 'zeros' is packed)")
        shift = _input_shift(layer.input_binarizer, layer.in_channels, (1, -3))
        wb, scale = _weight_signs(layer)
        _check_hooks(layer)
        bits, tapsum = engine.pack_conv_weight(wb)
        return cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                   layer.dilation, layer.groups, bits, tapsum, scale, _bias(layer, layer.out_channels), shift)

    def _reduction_words(self) -> int:
        cg = self.in_channels // self.groups
        return self.kernel_size[0] * self.kernel_size[1] * ((cg + 63) // 64)

    def _valid_bits(self) -> np.ndarray:  # one block of ceil(cg/64) words per kernel tap
        return np.tile(_word_mask(self.in_channels // self.groups), self.kernel_size[0] * self.kernel_size[1])

    def _extra_arrays(self) -> dict:
        return {"tapsum": np.ascontiguousarray(self.tapsum.detach().cpu().numpy(), dtype=np.int32),
                "bound": {}}  # (input shape, packed input, path) -> engine convolution, see _bind

    def _geometry(self, h: int, w: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """((pad_top, pad_left), (OH, OW)) for an h x w input, as torch's conv2d computes them."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        if isinstance(self.padding, str):
            if self.padding == "valid":
                pads = (0, 0)
            elif self.padding == "same":  # torch: total d(k-1), the extra one at the bottom / right
                pads = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
                return pads, ((h - 1) // sh + 1, (w - 1) // sw + 1)
            else:
                raise ValueError(f"unknown padding {self.padding!r}")
        else:
            pads = self.padding
        oh, ow = conv_out_size((h, w), (kh, kw), (sh, sw), pads, (dh, dw))
        if oh < 1 or ow < 1:
            raise ValueError(f"input {h}x{w} is smaller than the kernel {self.kernel_size} "
                             f"(dilation {self.dilation}, padding {self.padding})")
        return tuple(pads), (oh, ow)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                rprelu: Optional[np.ndarray] = None, emit_for: Optional["PackedBinaryConv2d"] = None,
                bn: Optional[Tuple[np.ndarray, bool]] = None, _fusable: Optional[bool] = None,
                pre_relu: bool = False) -> torch.Tensor:
        """y = acc * scale + bias, plus ``residual`` (a tensor of y's shape) if given.

        ``bn`` = (terms, fma) from :func:`_bn_epilogue` applies an eval BatchNorm to acc * scale + bias
        (before the residual) in the engine's epilogue, bit for bit as torch's BatchNorm would.
        ``pre_relu`` applies torch's ReLU to acc * scale + bias before that BatchNorm (a conv -> ReLU
        -> BN branch, BinaryUnit's ``pre_bn_act``).

        With a float32 CPU input and a C-contiguous float32 CPU residual that needs no gradient, the
        add is fused into the engine's epilogue, rounded exactly as ``forward(x) + residual``;
        otherwise it is that very expression.  ``rprelu`` (float32 [3, out_channels]: gamma, slope,
        zeta; only together with a fused residual) applies RPReLU after the add in the same epilogue.

        Packed activations between layers (set up by :func:`pack`, see :func:`_link_bits`): with
        ``emit_for`` (or this layer's own link) naming the packed conv that reads y next, the engine
        also returns y's signs as that conv binarizes them, attached to y; that conv then skips its
        packing pass, provided y is still the very tensor, unmodified (checked by its version).

        ``_fusable``: the caller's own :func:`_fusable_residual` of (x, residual), so that a fused unit
        does not check twice.

        A plain call (x alone) is resolved once and reused while nothing it read changes (_Resolved)."""
        plain = residual is None and rprelu is None and emit_for is None and bn is None and not pre_relu
        if plain:
            resolved = self.__dict__.get("_resolved")
            if resolved is not None:
                if resolved.valid(x, self.__dict__.get("_emit_for")):
                    return resolved.run(x, None, None, None)
                del self.__dict__["_resolved"]
        shape = x.shape
        plan = self._plans.get(shape) if x.dtype is torch.float32 else None
        if plan is None:
            plan = self._plan(x)
            if plan is None:  # empty batch
                y = _output(torch.zeros((0, self.out_channels, *self._geometry(shape[2], shape[3])[1])), x)
                return y if residual is None else y + residual  # (empty: BatchNorm and ReLU change nothing)
        fast = x.dtype is torch.float32 and x.device.type == "cpu" and not x.requires_grad
        res = None
        if residual is not None:
            if not (_fusable if _fusable is not None else _fusable_residual(x, residual, self)):
                if rprelu is not None:
                    raise ValueError("PackedBinaryConv2d: rprelu needs a fused residual (float32 CPU, contiguous)")
                return self.forward(x, bn=bn, pre_relu=pre_relu) + residual
            res = residual.numpy()
        elif rprelu is not None:
            raise ValueError("PackedBinaryConv2d: rprelu is applied only together with a residual")
        path = engine.get_path()
        a = self._arrays(path)
        nt = engine._num_threads or engine.get_num_threads()
        xbits = _bits_for_me(x, self) if fast else None
        xa = None if xbits is not None else (x.numpy() if fast else _input_array(x))
        nxt = (emit_for if emit_for is not None else self.__dict__.get("_emit_for")) if fast else None
        conv = self._bound(a, shape, plan, path, xbits is not None)
        out = conv(xa, xbits, nt, False, res, None, rprelu, nxt is not None, True,
                   None if nxt is None else nxt._arrays(path)["shift"], *(bn or (None, False)), pre_relu)
        if nxt is None and not fast:
            return _output(torch.from_numpy(out), x)
        if plain and type(x) is torch.Tensor:
            self.__dict__["_resolved"] = _Resolved(self, x, nxt, path, [])
        return _engine_output(out, nxt)

    def _bound(self, a: dict, shape: torch.Size, plan, path: str, packed_input: bool):
        """The engine's convolution for (shape, packed_input, path): the one bound before, or a new one."""
        return a["bound"].get((shape, packed_input, path)) or self._bind(a, shape, plan, path, packed_input)

    def _bind(self, a: dict, shape: torch.Size, plan, path: str, packed_input: bool):
        """The engine's convolution bound to these weights (the arrays ``a`` of :meth:`_arrays`, which
        drops it when a buffer changes) and to input ``shape``: checked once, then called per input."""
        bound = a["bound"]
        if len(bound) > 16:
            bound.clear()
        conv = engine._C.BoundConv2d((shape[0], self.in_channels, shape[2], shape[3]), packed_input, a["bits"],
                                     a["tapsum"], self.groups, self.kernel_size, self.stride, plan[0],
                                     self.dilation, plan[1], None if packed_input else a["shift"], a["scale"],
                                     a["bias"], path, a.get("wsplit"))
        bound[(shape, packed_input, path)] = conv
        return conv

    def _plan(self, x: torch.Tensor):
        """(pads, out_size, output shape) for x's shape, checked once per shape; None for an empty batch."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PackedBinaryConv2d expects inputs (N, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        pads, out_size = self._geometry(x.shape[2], x.shape[3])
        if x.shape[0] == 0:
            return None
        plan = (pads, out_size, torch.Size((x.shape[0], self.out_channels, *out_size)))
        if x.dtype is torch.float32:
            if len(self._plans) > 16:
                self._plans.clear()
            self._plans[x.shape] = plan
        return plan

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + (", rsign" if self.shift is not None else "")


class PackedBinaryLinear(_Packed):
    """Bit-packed twin of a binary-input, binary-weight :class:`BinaryLinear` (eval mode).

    forward(x: float (..., in_features)) -> float32 (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, weight_bits: np.ndarray, scale: torch.Tensor,
                 bias: torch.Tensor, shift: Optional[torch.Tensor] = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_buffers(weight_bits, scale, bias, shift)

    @classmethod
    def from_layer(cls, layer: BinaryLinear, name: str = "") -> "PackedBinaryLinear":
        if not isinstance(layer, BinaryLinear):
            raise TypeError(f"expected a BinaryLinear, got {type(layer).__name__}")
        _check_eval(layer, name)
        _check_methods(layer, BinaryLinear)
        shift = _input_shift(layer.input_binarizer, layer.in_features, (-1,))
        wb, scale = _weight_signs(layer)
        _check_hooks(layer)
        bits = engine.pack_rows(wb)
        return cls(layer.in_features, layer.out_features, bits, scale, _bias(layer, layer.out_features), shift)

    def _reduction_words(self) -> int:
        return (self.in_features + 63) // 64

    def _valid_bits(self) -> np.ndarray:
        return _word_mask(self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"PackedBinaryLinear expects inputs (..., {self.in_features}), got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        m = math.prod(lead)
        if m == 0:
            return _output(torch.zeros((*lead, self.out_features)), x)
        path = engine.get_path()
        a = self._arrays(path)
        x2 = x.reshape(m, self.in_features)
        xa = _input_array(x2)
        if not xa.flags.c_contiguous:
            xa = np.ascontiguousarray(xa)
        y = engine._C.linear(xa, a["bits"], self.in_features, a["shift"], a["scale"], a["bias"], False, path,
                             engine.get_num_threads(), "auto", a.get("wsplit"))
        return _output(torch.from_numpy(y).reshape(*lead, self.out_features), x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}" + (
            ", rsign" if self.shift is not None else "")


# --- whole models -----------------------------------------------------------------------------

def _pre_relu(pre_bn_act: Optional[nn.Module]) -> Optional[bool]:
    """A BinaryUnit's ``pre_bn_act`` as the engine epilogue's flag: False for nn.Identity, True for
    nn.ReLU, None for anything else (the unit cannot fuse, and its BatchNorm cannot fold)."""
    kind = type(pre_bn_act)
    return False if kind is nn.Identity else True if kind is nn.ReLU else None


def _call_trace(model: nn.Module, x: torch.Tensor) -> dict:
    """{id(module): (calls, {id(caller)})} over one forward pass of ``model`` on ``x``, where a module's
    caller is the module whose forward was running when it was called (None: called from outside)."""
    calls: dict = {}
    stack: list = []

    def pre(mod, args):
        n, callers = calls.get(id(mod), (0, set()))
        callers.add(id(stack[-1]) if stack else None)
        calls[id(mod)] = (n + 1, callers)
        stack.append(mod)

    def post(mod, args, out):
        stack.pop()

    hooks = [nn.modules.module.register_module_forward_pre_hook(pre),
             nn.modules.module.register_module_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _default_example(model: nn.Module) -> Optional[torch.Tensor]:
    """A zero image batch of one at the input size of a registry model or a model with a
    ``default_input_size`` (None for other models), on the model's device."""
    if getattr(model, "default_input_size", None) is None and not getattr(model, "registry_name", None):
        return None
    from .bench import default_input_size
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(1, *default_input_size(model), device=None if p is None else p.device, dtype=dtype)


def _fold_pairs(model: nn.Module, example_input: Optional[torch.Tensor] = None) -> int:
    """Fold eval BatchNorms into the packed layer right before them: BinaryUnit (bn(conv(x)), not
    with a pre_bn_act between them),
    BiFC (norm(linear(x)), a BatchNorm over the last dim) and (packed or real conv, BatchNorm2d)
    neighbours inside an nn.Sequential (the stem, the down-sampling shortcuts).  Returns the number folded.

    A pair folds only where its owner's own forward is what runs both layers (a parent module may
    call ``seq[0]`` and ``seq[1]`` itself, with other ops between).  With an example input (given, or
    _default_example's) one forward pass shows it: every call of both layers comes from the owner's
    forward, once per call of the owner; the pass runs only when there is such a nested Sequential
    pair.  BinaryUnit and BiFC pairs fold without it (their forward is checked by class), and so do
    nn.Sequential pairs where the Sequential is the model itself or run by plain nn.Sequentials up to
    it; without an example input the others stay, with a PackWarning.  Layers with forward
    hooks, or used in more than one place, stay too."""
    from ..layers.bifc import BiFC, TokenBatchNorm
    from ..models.blocks import BinaryUnit
    from torch.nn.modules.batchnorm import _BatchNorm

    def foldable(bn, kinds) -> bool:
        return (type(bn) in kinds and not bn.training and bn.running_mean is not None
                and bn.running_var is not None)

    candidates = []  # (owner, layer name, bn name, fold function)
    for m in model.modules():
        pairs = []  # (layer name, bn name, packed class, BN classes)
        if (isinstance(m, BinaryUnit) and type(m).forward is BinaryUnit.forward
                and _pre_relu(m._modules.get("pre_bn_act")) is False):
            pairs.append(("conv", "bn", PackedBinaryConv2d, (nn.BatchNorm2d,)))
        elif isinstance(m, BiFC) and type(m).forward is BiFC.forward:
            pairs.append(("linear", "norm", PackedBinaryLinear, (TokenBatchNorm,)))
        elif type(m) is nn.Sequential:
            names = list(m._modules)
            pairs.extend((a, b, PackedBinaryConv2d, (nn.BatchNorm2d,)) for a, b in zip(names, names[1:]))
        for a, b, cls, kinds in pairs:
            layer, bn = m._modules.get(a), m._modules.get(b)
            if (type(layer) is cls and isinstance(bn, _BatchNorm) and foldable(bn, kinds)
                    and bn.num_features == layer.scale.numel()):
                candidates.append((m, a, b, layer.fold_bn))
            elif (type(m) is nn.Sequential and type(layer) is nn.Conv2d and layer.weight.dtype is torch.float32
                  and isinstance(bn, _BatchNorm) and foldable(bn, (nn.BatchNorm2d,))
                  and bn.num_features == layer.out_channels):  # a real conv: the stem, a shortcut
                candidates.append((m, a, b, functools.partial(_fold_into_conv, layer)))
    if not candidates:
        return 0

    named = dict(model.named_modules())
    names = {id(m): n for n, m in named.items()}
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))

    def nested(owner) -> bool:  # an nn.Sequential whose parent (not a plain Sequential) may run its layers one by one
        name = names[id(owner)]
        while type(owner) is nn.Sequential and name:
            name = name.rpartition(".")[0]
            if type(named[name]) is not nn.Sequential:
                return True
        return False

    trace = None  # the forward pass only where a nested Sequential's pair needs it (BinaryUnit, BiFC: by class)
    example = example_input if example_input is not None else _default_example(model)
    if example is not None and any(nested(owner) for owner, *_ in candidates):
        try:
            trace = _call_trace(model, example)
        except Exception as e:
            if example_input is not None:
                raise
            warnings.warn(f"pack: fold_bn: the forward pass on an example input of shape {tuple(example.shape)} "
                          f"failed ({type(e).__name__}: {str(e)[:100]}); BatchNorms in nested nn.Sequentials are "
                          f"not folded; pass example_input= to pack()", PackWarning, stacklevel=3)

    def why_not(owner, layer, bn) -> str:
        for mod in (layer, bn):
            if _hook_kinds(mod):
                return f"{names[id(mod)]!r} has {_hook_kinds(mod)}"
            if uses[id(mod)] > 1:
                return f"{names[id(mod)]!r} is used in more than one place of the model"
        if not nested(owner):
            return ""
        label = repr(names[id(owner)])
        if trace is None:
            return (f"without an example input, pack cannot check that nn.Sequential {label} itself runs both (its "
                    f"parent may call them one by one); pass example_input= to pack()")
        n_owner = trace.get(id(owner), (0, set()))[0]
        if n_owner == 0:
            return f"on the example input, {label} itself does not run (its parent may call its layers)"
        for mod in (layer, bn):
            if trace.get(id(mod), (0, set())) != (n_owner, {id(owner)}):
                return f"on the example input, {names[id(mod)]!r} does not run only inside {label}"
        return ""

    n = 0
    for owner, a, b, fold in candidates:
        layer, bn = owner._modules[a], owner._modules[b]
        why = why_not(owner, layer, bn)
        if why:
            warnings.warn(f"pack: not folding {names[id(bn)]!r} ({type(bn).__name__}) into {names[id(layer)]!r}: "
                          f"{why}; it stays as it is (the output is correct)", PackWarning, stacklevel=3)
            continue
        fold(bn)
        owner._modules[b] = nn.Identity()
        n += 1
    return n


def _fold_into_conv(conv: nn.Conv2d, bn: nn.Module) -> None:
    """conv <- bn(conv(.)) for a real-valued conv: w * g / sqrt(var + eps), (b - mean) * g / sqrt(var + eps)
    + beta (computed in float64, rounded once; equal to the two layers up to float rounding)."""
    with torch.no_grad():
        inv = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
        g = inv * (bn.weight.double() if bn.weight is not None else 1.0)
        b0 = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
        bias = (b0 - bn.running_mean.double()) * g + (bn.bias.double() if bn.bias is not None else 0.0)
        conv.weight.copy_((conv.weight.double() * g.view(-1, 1, 1, 1)).float())
        conv.bias = nn.Parameter(bias.float(), requires_grad=conv.weight.requires_grad)


def _fusable_residual(x: torch.Tensor, r: torch.Tensor, conv: "PackedBinaryConv2d") -> bool:
    """True when conv(x, residual=r) adds r in the engine's epilogue (else it falls back to torch)."""
    if x.dtype is not torch.float32:
        return False
    plan = conv._plans.get(x.shape) or conv._plan(x)  # the plan forward would make (None: empty batch)
    return (plan is not None and x.device.type == "cpu" and not x.requires_grad and r.dtype is torch.float32
            and r.device.type == "cpu" and not r.requires_grad and r.shape == plan[-1] and r.is_contiguous())


def _engine_output(out, nxt: Optional["PackedBinaryConv2d"]) -> torch.Tensor:
    """The engine's result as a tensor; with ``nxt``, (y, bits): y carries the signs of y as ``nxt``
    binarizes them (see PackedBinaryConv2d.forward)."""
    if nxt is None:
        return torch.from_numpy(out)
    y = torch.from_numpy(out[0])
    y._onebit_bits = (nxt, y._version, _shift_key(nxt), out[1])
    return y


def _shift_key(conv: "PackedBinaryConv2d"):
    """What a conv's binarization of its input depends on besides the input: its shift buffer."""
    sh = conv.shift
    return None if sh is None else (id(sh), sh._version)


def _bits_for_me(x: torch.Tensor, conv: "PackedBinaryConv2d") -> Optional[np.ndarray]:
    """The packed signs attached to x by the layer that produced it for ``conv`` (see
    PackedBinaryConv2d.forward), or None when there are none or they may be stale: x modified in
    place since (its version), or conv's threshold shift replaced or changed."""
    tag = x.__dict__.get("_onebit_bits") if type(x) is torch.Tensor else None
    if tag is None or tag[0] is not conv or tag[1] != x._version or tag[2] != _shift_key(conv):
        return None
    return tag[3]


def _link_bits(model: nn.Module) -> int:
    """Let each packed layer whose output goes straight into the next packed conv of an nn.Sequential
    (a fused PackedBinaryUnit or a bare PackedBinaryConv2d, through nested nn.Sequentials and
    nn.Identity) hand that conv its input as packed signs from the engine's epilogue, saving the
    conv's own packing pass.  A link is a plain attribute (``_emit_for``), not a submodule: the
    module tree and the state_dict are unchanged.  Returns the number of links."""
    unit_cls = _FUSED_UNIT

    def flat(seq: nn.Module):
        for m in seq.children():
            if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
                yield from flat(m)
            elif type(m) is not nn.Identity:
                yield m

    def consumer(m):
        conv = m.conv if unit_cls is not None and type(m) is unit_cls else m
        if type(conv) is not PackedBinaryConv2d:
            return None
        cg = conv.in_channels // conv.groups
        return conv if conv.groups == 1 or cg % 64 == 0 else None  # the layout the engine emits

    n = 0
    for seq in model.modules():
        if not (isinstance(seq, nn.Sequential) and type(seq).forward is nn.Sequential.forward):
            continue
        items = list(flat(seq))
        for a, b in zip(items, items[1:]):
            producer = a if type(a) is PackedBinaryConv2d or (unit_cls is not None and type(a) is unit_cls) else None
            c = consumer(b)
            if producer is not None and c is not None and "_emit_for" not in producer.__dict__:
                producer.__dict__["_emit_for"] = c
                n += 1
    return n


def _rprelu_array(act: nn.Module) -> np.ndarray:
    """[3, C] float32 (gamma, slope, zeta) of an RPReLU, cached until one of its parameters changes."""
    key = (act.shift_in._version, act.slope._version, act.shift_out._version,
           act.shift_in.data_ptr(), act.slope.data_ptr(), act.shift_out.data_ptr())
    cached = act.__dict__.get("_packed_rprelu")
    if cached is None or cached[0] != key:
        arr = torch.stack([act.shift_in.detach(), act.slope.detach(), act.shift_out.detach()]).float().numpy().copy()
        cached = (key, arr)
        act.__dict__["_packed_rprelu"] = cached
    return cached[1]


def _bn_terms(bn: nn.BatchNorm2d, fma: bool) -> np.ndarray:
    """[2, C] float32 alpha, beta of an eval BatchNorm as torch's CPU kernel derives them."""
    c = bn.num_features
    w = bn.weight.detach() if bn.weight is not None else torch.ones(c)
    b = bn.bias.detach() if bn.bias is not None else torch.zeros(c)
    f = [engine.as_f32(t.float().cpu()) for t in (w, b, bn.running_mean, bn.running_var)]
    return engine._C.bn_terms(*f, float(bn.eps), fma)


_BN_MODE: list = []  # [mode] once probed: True (torch's BatchNorm fuses its multiply-adds), False, or None


def _torch_bn_fma() -> Optional[bool]:
    """How this process's torch computes an eval BatchNorm on float32 CPU tensors: True if with fused
    multiply-adds, False if with separate products and sums, None if the engine reproduces neither
    (then BatchNorms stay in torch).  Found once, by running a random binary conv + BatchNorm both
    ways on 8 images and comparing bit for bit."""
    if not _BN_MODE:
        g = torch.Generator().manual_seed(0)
        c = 48
        layer = BinaryConv2d(c, c, 3, 1, 1, bias=False, input_binarizer={"name": "rsign", "estimator": "approx_sign"},
                             scale="channel").eval()
        bn = nn.BatchNorm2d(c).eval()
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
            bn.running_mean.copy_(torch.randn(c, generator=g) * 3)
            bn.running_var.copy_(torch.rand(c, generator=g) * 4 + 0.01)
            bn.weight.copy_(torch.randn(c, generator=g))
            bn.bias.copy_(torch.randn(c, generator=g))
            x = torch.randn(8, c, 12, 12, generator=g)
            want = bn(layer(x))
            packed = PackedBinaryConv2d.from_layer(layer)
            mode = None
            for fma in (True, False):
                if torch.equal(packed(x, bn=(_bn_terms(bn, fma), fma)), want):
                    mode = fma
                    break
        _BN_MODE.append(mode)
    return _BN_MODE[0]


def _bn_epilogue(bn: nn.Module) -> Optional[Tuple[np.ndarray, bool]]:
    """(terms, fma) for PackedBinaryConv2d.forward's ``bn``: an eval nn.BatchNorm2d with running
    statistics that the engine reproduces exactly (see _torch_bn_fma), or None.  The terms are cached
    on the module until one of its tensors is replaced or changed in place (checked per call)."""
    if type(bn) is not nn.BatchNorm2d or bn.training:
        return None
    ps, bs = bn._parameters, bn._buffers
    w, b, mean, var = ps.get("weight"), ps.get("bias"), bs.get("running_mean"), bs.get("running_var")
    if mean is None or var is None:
        return None
    key = (id(w), id(b), id(mean), id(var), -1 if w is None else w._version, -1 if b is None else b._version,
           mean._version, var._version, bn.eps)
    cached = bn.__dict__.get("_packed_bn")
    if cached is not None and cached[0] == key:
        return cached[1]
    fma = _torch_bn_fma()
    if fma is None:
        return None
    cached = (key, (_bn_terms(bn, fma), fma), (w, b, mean, var))  # (holding the tensors: no id reuse)
    bn.__dict__["_packed_bn"] = cached
    return cached[1]


_nn_module = nn.modules.module


def _has_hooks(m: nn.Module) -> bool:
    """Hooks that calling ``m`` would run (its own or global): the case nn.Module.__call__ does not skip."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks
                or _nn_module._global_backward_hooks or _nn_module._global_backward_pre_hooks)


class _Resolved:
    """A packed conv's engine call with its arguments resolved once, for the next calls of the same
    kind: valid while the input has the same shape and kind (float32 CPU, no grad), the engine the
    same path, the conv the same link to a next conv, and every tensor the arguments came from is
    the same object at the same version (so load_state_dict, in-place edits, .to() and replaced
    buffers or modules all count).  Measured on the zoo ReSTE ResNet-20 at batch 1: a 16-channel
    32x32 unit in 26 instead of 37 us; the Python around each engine call is a large share of such
    small layers."""

    __slots__ = ("shape", "conv", "path", "nxt", "arrays", "slots", "stamp")

    def __init__(self, conv: "PackedBinaryConv2d", x: torch.Tensor, nxt, path: str, slots: list):
        self.shape, self.conv, self.nxt, self.path = x.shape, conv, nxt, path
        slots = [(conv._buffers, n) for n in conv._buffers] + slots
        if nxt is not None:
            slots.append((nxt._buffers, "shift"))
        self.slots = tuple(slots)
        self.stamp = tuple((t, None if t is None else t._version) for t in (d.get(n) for d, n in slots))
        self.arrays = conv._arrays(path)

    def valid(self, x: torch.Tensor, link) -> bool:
        if (type(x) is not torch.Tensor or x.shape != self.shape or x.dtype is not torch.float32 or not x.is_cpu
                or x.requires_grad or engine.get_path() != self.path or link is not self.nxt):
            return False
        for (d, n), (t, v) in zip(self.slots, self.stamp):
            if d.get(n) is not t or (t is not None and t._version != v):
                return False
        return True

    def run(self, x: torch.Tensor, res, rprelu, bn, pre_relu: bool = False) -> torch.Tensor:
        conv, nxt = self.conv, self.nxt
        xbits = _bits_for_me(x, conv)
        call = conv._bound(self.arrays, x.shape, conv._plans.get(x.shape) or conv._plan(x), self.path,
                           xbits is not None)
        xa, nt = None if xbits is not None else x.numpy(), engine._num_threads or engine.get_num_threads()
        if nxt is None and res is None and bn is None and not pre_relu:  # (each argument pybind converts costs)
            return torch.from_numpy(call(xa, xbits, nt))
        out = call(xa, xbits, nt, False, res, None, rprelu, nxt is not None, True,
                   None if nxt is None else nxt._arrays(self.path)["shift"], *(bn or (None, False)), pre_relu)
        return _engine_output(out, nxt)


class _FusedCall(_Resolved):
    """A PackedBinaryUnit's fused call (residual add, BatchNorm, RPReLU in the epilogue) resolved:
    besides what _Resolved checks, the unit's children are the same modules, the BatchNorm's and
    RPReLU's tensors unchanged, the BatchNorm's mode and eps the same, and no hook on the unit's
    children (it calls none of them as a module) nor a global one.
    Otherwise __call__ returns None, the unit drops it and takes its full path, which makes a new
    one where the call fuses."""

    __slots__ = ("mods", "bn", "eps", "rprelu", "out_shape", "identity_sc", "pre_relu")

    def __init__(self, unit: nn.Module, x: torch.Tensor, bn, rprelu, nxt, path: str):
        conv, bnm, act = unit.conv, unit.bn, unit.act
        slots = []
        if type(bnm) is nn.BatchNorm2d:
            slots += [(bnm._parameters, "weight"), (bnm._parameters, "bias"), (bnm._buffers, "running_mean"),
                      (bnm._buffers, "running_var")]
        if rprelu is not None:
            slots += [(act._parameters, n) for n in act._parameters]
        super().__init__(conv, x, nxt, path, slots)
        self.mods = (conv, bnm, unit.shortcut, act, unit.pre_bn_act)
        self.bn, self.eps, self.rprelu = bn, getattr(bnm, "eps", None), rprelu
        self.pre_relu = bool(_pre_relu(unit.pre_bn_act))
        self.out_shape = conv._plans[x.shape][-1]
        self.identity_sc = type(unit.shortcut) is nn.Identity

    def __call__(self, unit: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
        conv, bnm, sc, act, pre = self.mods
        m = unit._modules
        if (m["conv"] is not conv or m["bn"] is not bnm or m["shortcut"] is not sc or m["act"] is not act
                or m["pre_bn_act"] is not pre):
            return None
        if (_has_hooks(conv) or _epilogue_hooked(unit)
                or (self.bn is not None and (bnm.training or bnm.eps != self.eps))
                or not self.valid(x, unit.__dict__.get("_emit_for"))):
            return None
        r = x if self.identity_sc else sc(x)
        if (type(r) is not torch.Tensor or r.dtype is not torch.float32 or not r.is_cpu or r.requires_grad
                or r.shape != self.out_shape or not r.is_contiguous()):
            return None
        return self.run(x, r.numpy(), self.rprelu, self.bn, self.pre_relu)


def _epilogue_hooked(unit: nn.Module) -> bool:
    """True when a hook would see the fused path compute something other than what it hooks: any hook
    on a child the fused path computes in place of calling it (BatchNorm, activation, pre-BN ReLU, an
    identity shortcut), a global module hook (_has_hooks), or a forward hook on the conv (the fused
    call returns the unit's output, not the conv's).  The unit then takes BinaryUnit's path, which
    calls each child as a module.  (The full fused path calls the conv as a module with the unit's
    input, so the conv's pre-hooks run there as they would unfused.)"""
    conv = unit._modules.get("conv")
    if conv is not None and (conv._forward_hooks or conv._backward_hooks or conv._backward_pre_hooks):
        return True
    return any(m is not None and m is not conv and _has_hooks(m) for m in unit._modules.values())


def _fused_unit_class():
    """PackedBinaryUnit: a BinaryUnit whose folded packed conv adds the shortcut in its epilogue."""
    from ..models.blocks import BinaryUnit

    class PackedBinaryUnit(BinaryUnit):
        """act(BN(pre_bn_act(conv(x))) + shortcut(x)) in the packed conv's epilogue: a ReLU (when
        pre_bn_act is one), the BatchNorm either folded into the conv (fold_bn, only without a
        pre_bn_act) or applied as torch applies it (_bn_epilogue), then the residual add and an
        RPReLU, each rounded as the separate torch op.  Same children and state_dict as the
        BinaryUnit it replaces; falls back to BinaryUnit.forward otherwise."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fused = self.__dict__.get("_fused_call")
            if fused is not None:
                y = fused(self, x)
                if y is not None:
                    return y
                del self.__dict__["_fused_call"]
            conv, pre_relu = self.conv, _pre_relu(self.pre_bn_act)
            if type(conv) is PackedBinaryConv2d and pre_relu is not None and not _epilogue_hooked(self):
                bn = None if type(self.bn) is nn.Identity else _bn_epilogue(self.bn)
                if bn is not None or type(self.bn) is nn.Identity:
                    sc = self.shortcut
                    r = x if type(sc) is nn.Identity else sc(x)
                    act = self.act
                    nxt = self.__dict__.get("_emit_for")  # the next packed conv, when it reads our output (pack)
                    fusable = _fusable_residual(x, r, conv)
                    rprelu = _rprelu_array(act) if type(act) is RPReLU and act.dim == 1 and fusable else None
                    if rprelu is not None or type(act) is nn.Identity:
                        y = conv(x, residual=r, rprelu=rprelu, emit_for=nxt, bn=bn, _fusable=fusable,
                                 pre_relu=pre_relu)
                        if fusable and type(x) is torch.Tensor and not _has_hooks(conv):
                            self.__dict__["_fused_call"] = _FusedCall(self, x, bn, rprelu, nxt, engine.get_path())
                        return y
                    return act(conv(x, residual=r, bn=bn, _fusable=fusable, pre_relu=pre_relu))
            return BinaryUnit.forward(self, x)

        def __getstate__(self):  # pickle / deepcopy: the fused call (engine objects) is rebuilt on use
            state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
            state = dict(state)
            state.pop("_fused_call", None)
            return state

    PackedBinaryUnit.__qualname__ = "PackedBinaryUnit"
    PackedBinaryUnit.__module__ = __name__
    return PackedBinaryUnit


_FUSED_UNIT = None


def _fused_unit():
    """The PackedBinaryUnit class, made on first use (it subclasses the models' BinaryUnit)."""
    global _FUSED_UNIT
    if _FUSED_UNIT is None:
        _FUSED_UNIT = _fused_unit_class()
    return _FUSED_UNIT


def __getattr__(name: str):  # `onebit.deploy.packed.PackedBinaryUnit`, as pickle looks the class up
    if name == "PackedBinaryUnit":
        return _fused_unit()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fuse_units(model: nn.Module) -> int:
    """Give every BinaryUnit with a packed conv, and a BatchNorm folded into it or one the engine
    applies exactly (_bn_epilogue), the fused forward (class swap: modules, names and state_dict
    unchanged).  Returns the number fused."""
    from ..models.blocks import BinaryUnit
    unit_cls = _fused_unit()
    n = 0
    for m in model.modules():
        if (type(m) is BinaryUnit and type(m._modules.get("conv")) is PackedBinaryConv2d
                and _pre_relu(m._modules.get("pre_bn_act")) is not None
                and not any(_hook_kinds(c) for c in m.children())
                and (type(m._modules.get("bn")) is nn.Identity or _bn_epilogue(m._modules.get("bn")) is not None)):
            m.__class__ = unit_cls
            n += 1
    return n


def _swap_pools(model: nn.Module) -> int:
    """Replace nn.MaxPool2d / nn.AvgPool2d by their exact, faster stand-ins (deploy.pool) where
    they reproduce them bit for bit (no parameters or buffers: the state_dict is unchanged)."""
    from .pool import ExactAvgPool2d, SeparableMaxPool2d, avg_supported, separable_supported
    n = 0
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is None or not (separable_supported(child) or avg_supported(child)):
                continue
            kinds = _hook_kinds(child)
            if kinds:  # the stand-in would not run them
                full = f"{prefix}.{name}" if prefix else name
                warnings.warn(f"pack: keeping {full!r} ({type(child).__name__}) as it is: it has {kinds}, which the "
                              f"engine's pool would not run (its output stays correct)", PackWarning, stacklevel=3)
                continue
            if separable_supported(child):
                parent._modules[name] = SeparableMaxPool2d.from_pool(child)
            else:
                parent._modules[name] = ExactAvgPool2d.from_pool(child)
            n += 1
    return n


def pack(model: nn.Module, *, fold_bn: bool = False, inplace: bool = False, link_bits: bool = False,
         fuse_units: bool = True, example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """A copy of ``model`` (eval mode) with every packable binary layer replaced by its packed twin.

    Packs BinaryConv2d / BinaryLinear with binary inputs and weights; keeps layers with real inputs
    or weights; keeps, with a PackWarning, binary layers it cannot reproduce exactly and layers of
    classes from neither torch nor onebit that are leaves or hold their own parameters (in float32).  Raises
    ValueError (naming the layer) if the model or a binary layer is in training mode.
    ``fold_bn=True`` also folds eval BatchNorms that directly follow a packed layer (BinaryUnit,
    BiFC, nn.Sequential neighbours) into its scale and bias and replaces them by nn.Identity, where
    the pair's owner runs both (see _fold_pairs): checked on one forward pass of ``example_input``
    (default: a zero image at the input size of a registry model or a model with a
    ``default_input_size``); without one, a pair in an nn.Sequential nested in another module stays
    unfolded, with a PackWarning.  A layer or pool with forward hooks or pre-hooks is kept as it
    is, with a PackWarning (its replacement would not run them).
    ``inplace=True`` modifies ``model`` itself instead of a deep copy.  The copy also computes
    faster where it can do so exactly: nn.MaxPool2d and nn.AvgPool2d become the engine's pools
    (deploy.pool: the same tensors, bit for bit), BinaryViT's attention computes Q K^T and P V on
    the engine (deploy.attention; the same scores and P V bit for bit), and
    a BinaryUnit runs its BatchNorm, shortcut add and RPReLU in the packed conv's epilogue, each
    rounded as the separate torch op (the BatchNorm as torch's CPU kernel computes it, found once
    per process by _torch_bn_fma; or folded, with ``fold_bn=True``; same modules and state_dict);
    ``fuse_units=False`` leaves those three to torch, as on a torch whose BatchNorm the engine cannot
    reproduce (for comparisons: the outputs are the same either way).  With
    ``link_bits=True`` a packed layer whose output feeds the next packed conv of an nn.Sequential
    directly also emits that conv's input bits from its epilogue (the same bits the conv would pack
    itself; see _link_bits).  Off by default: in residual networks the float output is needed
    anyway, and emitting the bits measured no faster than the next layer packing them itself
    (Bi-Real ResNet-18, 1 thread, Zen 3: 14.31 vs 14.41 ms).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"pack expects an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(f"cannot pack {type(model).__name__}: the model is in training mode; call model.eval() first")
    binary = [(name, m) for name, m in model.named_modules() if isinstance(m, BinaryLayer)]
    for name, m in binary:
        _check_eval(m, name)
    if not binary:
        warnings.warn(f"pack: {type(model).__name__} has no binary layers (BinaryConv2d / BinaryLinear): "
                      f"nothing is bit-packed, it stays float32{' (BatchNorms folded)' if fold_bn else ''}",
                      PackWarning, stacklevel=2)
    out = model if inplace else copy.deepcopy(model)
    for name, parent in list(out.named_modules()):
        for child_name, child in list(parent._modules.items()):
            if child is None or not isinstance(child, BinaryLayer):
                continue
            full = f"{name}.{child_name}" if name else child_name
            try:
                if isinstance(child, BinaryConv2d):
                    packed = PackedBinaryConv2d.from_layer(child, full)
                elif isinstance(child, BinaryLinear):
                    packed = PackedBinaryLinear.from_layer(child, full)
                else:
                    raise NotPackable(f"unknown binary layer class {type(child).__name__}")
            except NotPackable as e:
                if not e.real:
                    warnings.warn(f"pack: keeping {full!r} ({type(child).__name__}) unpacked: {e}", PackWarning,
                                  stacklevel=2)
                continue
            parent._modules[child_name] = packed
    if fold_bn:
        _fold_pairs(out, example_input)
    if fuse_units:
        _fuse_units(out)
    if link_bits:
        _link_bits(out)
    _swap_pools(out)
    from .attention import swap_attention
    swap_attention(out)
    _warn_unknown_layers(out)
    return out


def _warn_unknown_layers(model: nn.Module) -> None:
    """A PackWarning for each module of a class from neither torch nor onebit (the user's own layers)
    that is a leaf or holds parameters of its own (a weight it may binarize itself, beside children
    pack() does know): pack() leaves it as it is, in float32 PyTorch.  The user's containers, which
    only call their children, pass silently.  BinaryLayers were warned about above."""
    for name, m in model.named_modules():
        if not name or isinstance(m, BinaryLayer) or type(m).__module__.startswith(("torch.", "onebit.")):
            continue
        leaf = next(m.children(), None) is None
        own = next(m.parameters(recurse=False), None) is not None or any(
            isinstance(c, (nn.ParameterList, nn.ParameterDict)) for c in m.children())
        if leaf or own:
            what = "this layer" if leaf else "this layer's own parameters (its children are packed as usual)"
            warnings.warn(f"pack: keeping {name!r} ({type(m).__name__}) in float32: the packer does not know "
                          f"{what}; it runs in PyTorch as before", PackWarning, stacklevel=3)
