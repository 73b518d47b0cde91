"""Model registry, timm style: ``create_model(name, **kwargs)`` and ``list_models()``.

Factories are registered with ``@register_model``; zoo weights (trained checkpoints that
ship with onebit) are registered separately by :mod:`onebit.zoo` under the recipe name that
trained them, so ``list_models(pretrained=True)`` lists exactly the names with weights.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Callable, Dict

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def _pretrained_names() -> list[str]:
    from .. import zoo
    return zoo.available()


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern``; with ``pretrained=True``,
    exactly the names that have zoo weights."""
    names = _pretrained_names() if pretrained else list(_MODELS) + _pretrained_names()
    return sorted(n for n in set(names) if fnmatch.fnmatch(n, pattern))


def model_factory(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; `onebit list-models` lists the {len(list_models())} names")
    return _MODELS[name]


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build registry model ``name``; ``pretrained=True`` loads its zoo weights."""
    from .. import zoo
    if pretrained:
        if name not in zoo.available():
            raise ValueError(f"no zoo weights for {name!r}; models with weights: "
                             f"{', '.join(zoo.available()) or 'none yet'}")
        return zoo.load(name, **kwargs)
    if name not in _MODELS and name in zoo.available():  # a zoo name without weights: its architecture
        info = zoo.meta(name)
        return create_model(info["model"], **{**info.get("model_kwargs", {}), **kwargs})
    factory = model_factory(name)
    try:
        model = factory(**kwargs)
    except TypeError as e:  # an option no layer takes: say so, not where deep inside it surfaced
        m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if m is None or m.group(1) not in kwargs:
            raise
        raise ValueError(f"model {name!r} takes no option {m.group(1)!r}; check its spelling "
                         f"(the options are the keyword arguments of onebit.models.{factory.__name__})") from None
    model.registry_name = name
    model.registry_kwargs = dict(kwargs)
    return model
