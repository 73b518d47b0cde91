"""String registry of binarizers and quantizers, so recipes can name them.

    get("clipped_ste", c=1.5)        -> a fresh nn.Module
    available()                      -> the registered names
    build(spec, channels=C, dim=1)   -> a module from a name, a {"name": ..., **options} dict,
                                        an existing module, or None (= keep the input real)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Union

import torch.nn as nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}

Spec = Union[None, str, dict, nn.Module]


def register(name: str) -> Callable:
    """Class decorator: register a binarizer/quantizer under ``name``."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"binarizer name {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def available() -> list[str]:
    """Names accepted by :func:`get`, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **options: Any) -> nn.Module:
    """A new binarizer module registered as ``name``, built with ``options``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown binarizer {name!r}; available: {', '.join(available())}")
    cls = _REGISTRY[name]
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        allowed = [p for p in inspect.signature(cls).parameters]
        raise ValueError(f"bad options {options} for binarizer {name!r} ({e}); allowed options: {allowed}") from None
    return cls(**options)


def build(spec: Spec, channels: Optional[int] = None, dim: int = 1) -> Optional[nn.Module]:
    """Turn a spec into a module; ``channels``/``dim`` are passed to binarizers that take them."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict):
        if "name" not in spec:
            raise ValueError(f"binarizer spec {spec!r} has no 'name'; e.g. {{'name': 'reste', 'o_end': 3}}")
        options = dict(spec)
        name = options.pop("name")
    else:
        raise ValueError(f"binarizer spec must be a name, a dict with 'name', a module or None; got {spec!r}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown binarizer {name!r}; available: {', '.join(available())}")
    params = inspect.signature(_REGISTRY[name]).parameters
    if "channels" in params and "channels" not in options:
        if channels is None:
            raise ValueError(f"binarizer {name!r} needs 'channels' and the layer did not give it")
        options["channels"] = channels
    if "dim" in params and "dim" not in options:
        options["dim"] = dim
    return get(name, **options)
