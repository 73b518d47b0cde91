"""onebit's zoo: trained weights that ship inside the package.

Each entry is two files in this folder, named after the recipe that trained it
(``reste_resnet20_cifar10``: recipe ``reste-resnet20-cifar10``):

- ``NAME.safetensors``: the state dict (safetensors: no pickle, nothing executes on load);
- ``NAME.json``: what rebuilds and uses it: ``model`` (registry name), ``model_kwargs``,
  ``class_names``, ``mean``/``std`` (input normalisation), ``input_size`` [C, H, W],
  ``recipe``, ``progress``, and the validation ``metrics``, ``commit`` and recipe ``overrides``
  of the run (a KD teacher added to the recipe, say).

``create_model(NAME, pretrained=True)`` loads one; ``list_models(pretrained=True)`` lists them;
``onebit zoo-add CHECKPOINT --name NAME`` adds one from a training checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

ZOO_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names with zoo weights."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.json") if (ZOO_DIR / f"{p.stem}.safetensors").is_file())


def meta(name: str) -> dict:
    if name not in available():
        raise ValueError(f"no zoo weights named {name!r}; available: {', '.join(available()) or 'none yet'}")
    return json.loads((ZOO_DIR / f"{name}.json").read_text())


def load_with_meta(name: str, **kwargs) -> tuple[nn.Module, dict]:
    """(model in eval mode with its zoo weights, its meta)."""
    from safetensors.torch import load_file
    from ..train.checkpoint import build_model, load_state
    info = meta(name)
    if kwargs:
        raise ValueError(f"zoo model {name!r} is fixed by its weights; options {sorted(kwargs)} cannot be changed")
    model = build_model(info)
    load_state(model, load_file(str(ZOO_DIR / f"{name}.safetensors")), f"zoo entry {name!r}")
    model.registry_name = name
    model.pretrained_cfg = dict(info)  # class names, mean / std, input size, recipe (as timm's pretrained_cfg)
    return model.eval(), info


def load(name: str, **kwargs) -> nn.Module:
    """The zoo model in eval mode; its meta (class names, normalisation...) is ``model.pretrained_cfg``."""
    return load_with_meta(name, **kwargs)[0]


def add(checkpoint, name: str, zoo_dir=None, force: bool = False) -> Path:
    """Export a training checkpoint's model to the zoo folder (safetensors + JSON); an existing
    entry of that name is replaced only with ``force``."""
    import json as _json
    from safetensors.torch import save
    from ..train import checkpoint as C
    out = Path(zoo_dir or ZOO_DIR)
    if not force and any((out / f"{name}{s}").exists() for s in (".safetensors", ".json")):
        raise ValueError(f"zoo entry {name!r} exists in {out}; use --force (force=True) to replace it")
    ckpt = C.load(checkpoint)
    model, info = C.load_model(checkpoint)  # checks the weights fit the model
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    C.write_atomic(out / f"{name}.safetensors", lambda f: f.write(save(state)))
    run = Path(checkpoint).parent / "results.json"
    extra = _json.loads(run.read_text()) if run.is_file() else {}
    info = {**info, "metrics": extra.get("metrics", {"best": ckpt.get("best")}), "commit": extra.get("commit"),
            "overrides": extra.get("overrides"), "epochs": extra.get("epochs"), "wall_time_s": extra.get("wall_time_s"),
            "machine": extra.get("machine"), "data": extra.get("data")}
    C.write_atomic(out / f"{name}.json", lambda f: f.write((_json.dumps(info, indent=2) + "\n").encode()))
    for suffix in (".safetensors", ".json"):  # package data: readable by all, whatever the umask
        (out / f"{name}{suffix}").chmod(0o644)
    return out / f"{name}.safetensors"
