"""The packed model file: bits on disk, validated in full before anything is built from it.

    onebit.deploy.save(model, "net.packed.safetensors")    # packs (fold_bn=True) if not packed yet
    model = onebit.deploy.load("net.packed.safetensors")   # eval-mode nn.Module, same logits

The file is a plain safetensors file (docs/deploy.md):

    [8 bytes: N, little-endian u64] [N bytes: JSON header, space-padded] [data region]

holding the packed model's state dict: the packed layers' ``weight_bits`` as ``U64`` (the engine's
uint64 words, 1 bit per binary weight; from version 2 each row holds only the words of its reduction,
without the zero words that align it in memory, which load adds back; loaded into the layers' int64
buffers bit for bit), everything else in its own dtype.  Tensors are laid out back to back, 8-byte types first, so
every tensor is aligned.  ``__metadata__`` (string values) holds

    format          "onebit.packed"               format_version  "2" (version 1, aligned rows, is read too)
    model           registry name                 model_kwargs    JSON: create_model's kwargs
    progress        JSON: binarizer schedule t    pack            JSON: {"fold_bn", "int8_layers"}
    meta            JSON: class_names, mean, std, input_size, recipe... (empty for a bare model)
    sha256_data     SHA-256 of the data region
    sha256_header   SHA-256 of the header as canonical JSON (sorted keys, no spaces), this key left out
    onebit_version, torch_version   informational

No pickle and no code: loading rebuilds the structure from the registry,
``create_model(model, **model_kwargs)`` -> ``set_progress`` -> ``eval()`` -> ``pack(fold_bn)`` ->
``quantize_int8(int8_layers)``, then loads the tensors with ``load_state_dict(strict=True)``.  A model
without a registry name cannot be saved: register its factory with ``onebit.models.register_model``
and pass ``name=`` (and ``config=``).

Before any tensor is built the loader checks the header length, the header JSON, every tensor's
dtype, shape and offsets (inside the data region, no overlaps, no gaps, sizes add up to the file
size), the format and version, both checksums, the meta (input_size [C, H, W] of positive integers,
mean and std of C finite numbers, std > 0, class_names a list of strings, one per class), that the
model the header describes is not far larger than the file (sized first without memory, as meta
tensors: a re-signed header cannot make the loader allocate a large model for a small file), and
that names, shapes and dtypes match the rebuilt model; then that no weight row has a bit set outside its
weights (the engine counts whole words).
Any failure is a :class:`PackedFileError` (a ValueError) with a one-line message.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..layers.binary import BinaryLayer
from .packed import PackedBinaryConv2d, PackedBinaryLinear, PackWarning, pack
from .quant import Int8Conv2d, Int8Linear, quantize_int8

FORMAT = "onebit.packed"
VERSION = 2
READS = ("1", "2")  # version 1 stored weight_bits rows with their alignment words
MAX_HEADER = 16 << 20  # bytes; a real header is a few tens of kB

# safetensors dtype -> (NumPy dtype of the bytes, torch dtype in the model)
DTYPES = {
    "F64": ("<f8", torch.float64), "F32": ("<f4", torch.float32), "F16": ("<f2", torch.float16),
    "BF16": ("<i2", torch.bfloat16), "I64": ("<i8", torch.int64), "I32": ("<i4", torch.int32),
    "I16": ("<i2", torch.int16), "I8": ("i1", torch.int8), "U8": ("u1", torch.uint8), "BOOL": ("u1", torch.bool),
    "U64": ("<u8", torch.int64),  # packed weight words (uint64) held in int64 buffers
}
LABELS = {t: k for k, (_, t) in DTYPES.items() if k != "U64"}
META_KEYS = ("format", "format_version", "model", "model_kwargs", "progress", "pack", "meta", "sha256_data",
             "sha256_header")


class PackedFileError(ValueError):
    """A packed model file that cannot be used: missing, truncated, corrupt or of another version."""


# --- building the structure -------------------------------------------------------------------

def build(name: str, config: dict, progress: float = 1.0, fold_bn: bool = True,
          int8_layers: tuple = ()) -> nn.Module:
    """The packed structure of registry model ``name`` (random weights): what load() fills."""
    from ..binarize import set_progress
    from ..models import create_model
    model = create_model(name, **config)
    set_progress(model, progress)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PackWarning)  # warned about when the file was saved
        pack(model, fold_bn=fold_bn, inplace=True)
    if int8_layers:
        quantize_int8(model, int8_layers)
    return model


def is_packed(model: nn.Module) -> bool:
    """True if ``model`` holds packed binary or int8 layers (the output of pack / quantize_int8)."""
    return any(isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear, Int8Conv2d, Int8Linear))
               for m in model.modules())


def _bits_names(model: nn.Module) -> set:
    return {f"{n}.weight_bits" if n else "weight_bits" for n, m in model.named_modules()
            if isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear))}


def _packed_layers(model: nn.Module) -> dict:
    """{weight_bits key: its packed layer}."""
    return {f"{n}.weight_bits" if n else "weight_bits": m for n, m in model.named_modules()
            if isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear))}


def _row_words(model: nn.Module) -> dict:
    """{weight_bits key: words of its rows' reduction} (the rows are longer in memory: aligned)."""
    return {k: m._reduction_words() for k, m in _packed_layers(model).items()}


def _label(name: str, t: torch.Tensor, bits: set) -> str:
    if name in bits:
        return "U64"
    if t.dtype not in LABELS:
        raise ValueError(f"cannot save tensor {name!r}: dtype {t.dtype} is not supported")
    return LABELS[t.dtype]


def _structure(model: nn.Module, version: int = VERSION) -> dict:
    """{state dict key: (shape, file dtype)}: what a file of this model holds (in ``version``'s layout)."""
    bits = _bits_names(model)
    out = {k: (tuple(v.shape), _label(k, v, bits)) for k, v in model.state_dict().items()}
    if version >= 2:
        for k, words in _row_words(model).items():
            out[k] = ((out[k][0][0], words), out[k][1])
    return out


def _diff(want: dict, got: dict) -> str:
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    wrong = [k for k in want if k in got and want[k] != got[k]]
    if not (missing or extra or wrong):
        return ""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape or dtype (e.g. {k!r}: {list(got[k][0])} {got[k][1]}, "
                     f"expected {list(want[k][0])} {want[k][1]})")
    return ", ".join(parts)


class _MetaFactories(TorchFunctionMode):
    """Within it, tensor factories without a device (torch.empty, zeros, randn, ...: a layer's weights)
    make meta tensors, with a shape and a dtype but no memory; tensors made from data (torch.tensor:
    a binarizer's constants) stay real, as code may read them."""

    FACTORIES = {torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
                 torch.randint, torch.randperm, torch.arange, torch.linspace, torch.logspace, torch.eye}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs = {**kwargs, "device": "meta"}
        return func(*args, **kwargs)


def _check_model_size(where: str, info: dict) -> None:
    """PackedFileError if the model that ``info``'s name and model_kwargs describe must hold far more
    than the file's bytes (its theoretical_bytes, from a skeleton of meta tensors: no memory): a
    re-signed header cannot make the loader allocate a large model for a small file.  The real
    build then allocates at most about 32 x the file (float latent weights for the bits); the exact
    tensor check follows it (load_with_meta)."""
    from ..models import create_model
    try:
        with _MetaFactories():
            skeleton = create_model(info["model"], **info["model_kwargs"])
    except Exception:
        return  # the real build says what is wrong with the config
    need = theoretical_bytes(skeleton, tuple(info["pack"]["int8_layers"]))
    if need > 2 * info["file_bytes"] + 4096:  # slack: folded BatchNorms are not in the file
        raise PackedFileError(f"{where}: model {info['model']!r} with its model_kwargs holds at least {need} bytes "
                              f"packed, but the file has {info['file_bytes']}: the header does not describe this "
                              f"file (checked before building the model)")


# --- sizes ------------------------------------------------------------------------------------

def theoretical_bytes(model: nn.Module, int8_layers: tuple = ()) -> int:
    """What a packed ``model`` (unpacked, as trained) must hold at least: 1 bit per binary weight,
    1 byte per weight of an int8 layer plus a float32 scale per output channel, and every other
    parameter and buffer of its state dict in its own dtype (BatchNorm statistics included)."""
    binary = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, BinaryLayer) and m.binary_weights}
    int8 = {f"{n}.weight" for n in int8_layers}
    bits = 0
    for k, v in model.state_dict().items():
        if k in binary:
            bits += v.numel()
        elif k in int8:
            bits += 8 * v.numel() + 32 * v.shape[0]
        else:
            bits += 8 * v.numel() * v.element_size()
    return (bits + 7) // 8


def float32_bytes(model: nn.Module) -> int:
    """The state dict with every floating tensor in float32 (a float32 weights file, header aside)."""
    return sum(v.numel() * (4 if v.is_floating_point() else v.element_size()) for v in model.state_dict().values())


# --- writing ------------------------------------------------------------------------------------

def _canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _header_hash(header: dict) -> str:
    meta = {k: v for k, v in header["__metadata__"].items() if k != "sha256_header"}
    return hashlib.sha256(_canonical({**header, "__metadata__": meta})).hexdigest()


def _encode(tensors: dict, labels: dict, metadata: dict) -> bytes:
    """safetensors bytes: 8-byte types first (aligned), then by name."""
    order = sorted(tensors, key=lambda k: (-np.dtype(DTYPES[labels[k]][0]).itemsize, k))
    entries, chunks, pos = {}, [], 0
    for k in order:
        t = tensors[k].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        entries[k] = {"dtype": labels[k], "shape": list(t.shape), "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    data = b"".join(chunks)
    header = {"__metadata__": {**metadata, "sha256_data": hashlib.sha256(data).hexdigest()}, **entries}
    header["__metadata__"]["sha256_header"] = _header_hash(header)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _write_atomic(data: bytes, path: Path) -> None:
    from ..train.checkpoint import write_atomic
    write_atomic(path, lambda f: f.write(data))


def _json_text(value, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot save: the {what} is not JSON-serialisable ({e})") from None


def save(model: nn.Module, path, *, name: Optional[str] = None, config: Optional[dict] = None,
         fold_bn: Optional[bool] = None, int8_first_last: bool = False, meta: Optional[dict] = None,
         progress: Optional[float] = None, force: bool = False) -> Path:
    """Write ``model`` as a packed file at ``path`` (atomically) and return the path.

    ``model``: an eval-mode model, packed here with ``fold_bn`` (default False: bit-identical to the model) and, with
    ``int8_first_last``, int8 first and last layers; or the output of pack() / quantize_int8(),
    saved as it is (its fold_bn is found by rebuilding it when not given).  ``name`` / ``config``:
    the registry name and create_model kwargs (default: the model's ``registry_name`` /
    ``registry_kwargs``, set by create_model).  ``meta``: what eval needs (class_names, mean, std,
    input_size; a checkpoint's meta) and ``progress`` (default meta's, else 1).  Refuses to
    overwrite an existing file unless ``force``.  The file is checked to rebuild into the same
    structure before it is written.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name")
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass force=True (--force) to overwrite it")
    name = name if name is not None else getattr(model, "registry_name", None)
    if not name:
        raise ValueError("cannot save a model without a registry name: the file rebuilds it with "
                         "create_model(name, **config); register its factory with onebit.models.register_model "
                         "and pass name= (and config=)")
    config = dict(getattr(model, "registry_kwargs", {}) if config is None else config)
    config = json.loads(_json_text(config, "model config"))  # as load() will see it (tuples -> lists)
    meta = dict(meta or {})
    progress = float(meta.get("progress", 1.0) if progress is None else progress)
    meta = {k: v for k, v in meta.items() if k not in ("model", "model_kwargs", "progress")}

    if not is_packed(model):
        if model.training:
            raise ValueError(f"cannot save {type(model).__name__}: it is in training mode; call model.eval() first")
        fold = bool(fold_bn)  # default: unfolded, bit-identical to the model
        packed = pack(model, fold_bn=fold)
        int8 = tuple(quantize_int8(packed)) if int8_first_last else ()
        candidates = [fold]
    else:
        packed = model
        int8 = tuple(n for n, m in model.named_modules() if isinstance(m, (Int8Conv2d, Int8Linear)))
        if int8_first_last and not int8:
            raise ValueError("the model is already packed without int8 layers; pass the unpacked model "
                             "to quantize its first and last layers")
        candidates = [True, False] if fold_bn is None else [bool(fold_bn)]
    have = _structure(packed)
    why = ""
    for fold in candidates:
        try:
            ref = build(name, config, progress, fold, int8)
        except Exception as e:  # unknown name, kwargs the factory does not take...
            raise ValueError(f"cannot save: create_model({name!r}, **{config}) fails "
                             f"({type(e).__name__}: {e})") from None
        why = _diff(_structure(ref), have)
        if not why:
            break
    else:
        raise ValueError(f"cannot save: the model does not match create_model({name!r}, **config) packed with "
                         f"fold_bn={candidates if len(candidates) > 1 else candidates[0]}: {why}")

    why = _bad_meta(json.loads(_json_text(meta, "meta")), getattr(packed, "num_classes", None))
    if why:
        raise ValueError(f"cannot save: meta {why}")
    from .. import __version__
    metadata = {
        "format": FORMAT, "format_version": str(VERSION), "model": str(name),
        "model_kwargs": _json_text(config, "model config"), "progress": _json_text(progress, "progress"),
        "pack": _json_text({"fold_bn": fold, "int8_layers": list(int8)}, "pack options"),
        "meta": _json_text(meta, "meta"), "onebit_version": str(__version__), "torch_version": torch.__version__,
    }
    bits = _bits_names(packed)
    state = packed.state_dict()
    if VERSION >= 2:  # rows without their alignment words
        state.update({k: state[k][:, :words] for k, words in _row_words(packed).items()})
    data = _encode(state, {k: _label(k, v, bits) for k, v in state.items()}, metadata)
    _write_atomic(data, path)
    return path


# --- reading ------------------------------------------------------------------------------------

def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not allowed")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad_meta(meta: dict, classes: Optional[int] = None) -> str:
    """What is wrong with the input_size, mean, std and class_names of a file's meta ('' if nothing;
    each is optional: a bare model has none); with ``classes``, class_names must name that many."""
    size = meta.get("input_size")
    if "input_size" in meta and not (isinstance(size, list) and len(size) == 3 and all(_is_int(v) and v > 0
                                                                                       for v in size)):
        return f"input_size {_short(size)} is not [C, H, W] of positive integers"
    channels = size[0] if "input_size" in meta else 3
    for k in ("mean", "std"):
        v = meta.get(k)
        if k in meta and not (isinstance(v, list) and len(v) == channels and all(_is_number(a) for a in v)):
            return f"{k} {_short(v)} is not {channels} finite numbers (one per input channel)"
    if "std" in meta and min(meta["std"]) <= 0:
        return f"std {_short(meta['std'])} has a value <= 0"
    names = meta.get("class_names")
    if "class_names" in meta and not (isinstance(names, list) and names and all(isinstance(c, str) for c in names)):
        return f"class_names {_short(names)} is not a list of strings"
    if names is not None and _is_int(classes) and len(names) != classes:
        return f"class_names has {len(names)} names for the model's {classes} classes"
    return ""


def _parse(raw: bytes, where: str) -> tuple:
    """(header, data start, info) of a packed file's bytes, everything checked; PackedFileError otherwise."""
    def fail(msg):
        raise PackedFileError(f"{where}: {msg}")

    size = len(raw)
    if size == 0:
        fail("empty file (0 bytes)")
    if size < 8:
        fail(f"truncated: {size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n < 2 or n > size - 8:
        fail(f"header length {n} does not fit the file ({size} bytes): truncated, or not a packed file")
    if n > MAX_HEADER:
        fail(f"header length {n} exceeds {MAX_HEADER} bytes")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        fail(f"header is not valid JSON ({str(e)[:80]}): corrupt, or not a packed file")
    if not isinstance(header, dict):
        fail("header is not a JSON object")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        fail("no __metadata__ of strings: not an onebit packed file")
    if meta.get("format") != FORMAT:
        fail(f"format {meta.get('format')!r} is not {FORMAT!r}: not an onebit packed file")
    version = meta.get("format_version")
    if version not in READS:
        fail(f"format version {version!r} is not supported (this onebit reads versions {', '.join(READS)}); "
             f"use the onebit that wrote it")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        fail(f"metadata lacks {', '.join(missing)}")

    data_start, data_len = 8 + n, size - 8 - n
    spans = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            fail(f"tensor {name!r}: entry must hold exactly dtype, shape and data_offsets")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPES:
            fail(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(d) and d >= 0 for d in shape):
            fail(f"tensor {name!r}: bad shape {shape!r}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs):
            fail(f"tensor {name!r}: bad data_offsets {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            fail(f"tensor {name!r}: data_offsets {offs} lie outside the data region ({data_len} bytes)")
        need = math.prod(shape) * np.dtype(DTYPES[dtype][0]).itemsize
        if end - begin != need:
            fail(f"tensor {name!r}: {dtype} {shape} needs {need} bytes, its offsets span {end - begin}")
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin < pos:
            fail(f"tensor {name!r} overlaps another tensor (offset {begin} < {pos})")
        if begin > pos:
            fail(f"{begin - pos} unused bytes before tensor {name!r}")
        pos = end
    if pos != data_len:
        fail(f"the tensors take {pos} bytes but the data region has {data_len}: truncated or extra bytes")

    if hashlib.sha256(memoryview(raw)[data_start:]).hexdigest() != meta["sha256_data"]:
        fail("data checksum (sha256_data) mismatch: the tensor data is corrupt")
    if _header_hash(header) != meta["sha256_header"]:
        fail("header checksum (sha256_header) mismatch: the header is corrupt")

    try:
        config = json.loads(meta["model_kwargs"])
        progress = float(json.loads(meta["progress"]))
        opts = json.loads(meta["pack"])
        extra = json.loads(meta["meta"])
        fold_bn, int8 = opts["fold_bn"], opts["int8_layers"]
        ok = (isinstance(config, dict) and isinstance(extra, dict) and isinstance(fold_bn, bool)
              and isinstance(int8, list) and all(isinstance(s, str) for s in int8))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        fail("metadata model_kwargs / progress / pack / meta are not the expected JSON")
    why = _bad_meta(extra)
    if why:
        fail(f"meta {why}")
    info = {**extra, "model": meta["model"], "model_kwargs": config, "progress": progress,
            "pack": {"fold_bn": fold_bn, "int8_layers": int8}, "format_version": int(version), "file_bytes": size,
            "onebit_version": meta.get("onebit_version")}
    return header, data_start, info


def _read(path) -> tuple:
    p = Path(path)
    if p.is_dir():
        raise PackedFileError(f"{str(p)!r} is a directory, not a packed file; give the path of the file itself")
    if not p.exists():
        raise PackedFileError(f"packed file {str(p)!r} does not exist")
    if not p.is_file():
        raise PackedFileError(f"{str(p)!r} is not a regular file (a device, pipe or socket); give a packed file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise PackedFileError(f"{p}: cannot be read ({e.strerror})") from None
    return (raw, *_parse(raw, str(p)))


def read_info(path) -> dict:
    """The validated metadata of a packed file (model, model_kwargs, progress, pack, meta keys)."""
    return _read(path)[3]


def load_with_meta(path) -> tuple[nn.Module, dict]:
    """(eval-mode model, its info: read_info's dict) from a packed file; PackedFileError if unusable."""
    raw, header, start, info = _read(path)
    where = str(path)
    _check_model_size(where, info)
    try:
        model = build(info["model"], info["model_kwargs"], info["progress"], info["pack"]["fold_bn"],
                      tuple(info["pack"]["int8_layers"]))
    except Exception as e:
        raise PackedFileError(f"{where}: cannot rebuild model {info['model']!r} from its config "
                              f"({type(e).__name__}: {str(e)[:120]}); was it written by another onebit version?") from None
    stored = {k: (tuple(e["shape"]), e["dtype"]) for k, e in header.items() if k != "__metadata__"}
    why = _diff(_structure(model, info["format_version"]), stored)
    if why:
        raise PackedFileError(f"{where}: tensors do not match model {info['model']!r}: {why}")
    why = _bad_meta(info, getattr(model, "num_classes", None))
    if why:
        raise PackedFileError(f"{where}: meta {why}")
    state = {}
    for k, e in stored.items():
        np_dtype, torch_dtype = DTYPES[e[1]]
        begin = header[k]["data_offsets"][0]
        a = np.frombuffer(raw, dtype=np_dtype, count=math.prod(e[0]), offset=start + begin).reshape(e[0]).copy()
        t = torch.from_numpy(a.view("<i8") if e[1] == "U64" else a)
        if t.dtype != torch_dtype:  # BF16, BOOL: same-size views
            t = t.view(torch_dtype)
        state[k] = t
    own = model.state_dict()
    for k, layer in _packed_layers(model).items():
        bits = state[k].numpy().view(np.uint64)
        valid = layer._valid_bits()
        stray = bits[:, :valid.size] & ~valid
        if stray.any() or bits[:, valid.size:].any():  # the engine would count such bits as weights
            raise PackedFileError(f"{where}: tensor {k!r} has bits set outside its weights (beyond "
                                  f"{layer._reduction_words()} words per row or past the reduction in a "
                                  f"row's last word); it was not written by onebit's pack: pack the model again")
        if state[k].shape != own[k].shape:  # version 2: the alignment words back, zero
            state[k] = torch.cat([state[k], state[k].new_zeros(state[k].shape[0], own[k].shape[1] - state[k].shape[1])], 1)
    model.load_state_dict(state, strict=True)
    return model.eval(), info


def load(path) -> nn.Module:
    """The eval-mode model stored in a packed file (see the module docstring)."""
    return load_with_meta(path)[0]


def is_packed_file(path) -> bool:
    """True if ``path`` starts like an onebit packed file (its header names the format);
    a corrupt packed file may still be one: load() says what is wrong with it."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            n = int.from_bytes(head, "little")
            return f.read(min(n, 1 << 16)).find(b'"' + FORMAT.encode() + b'"') >= 0
    except OSError:
        return False


def sniff(path) -> str:
    """'packed' or 'checkpoint': how to read the file at ``path``, from its first bytes (a
    torch.save zip or pickle is a checkpoint, a header naming the format is a packed file); files
    that are neither go by suffix (.safetensors / .onebit: packed, so load() names the problem)."""
    if is_packed_file(path):
        return "packed"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "checkpoint"
    return "packed" if Path(path).suffix in (".safetensors", ".onebit") else "checkpoint"
