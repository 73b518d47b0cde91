"""Recipes: plain YAML files plus dotted command-line overrides checked against the recipe's types.

    recipe = load_recipe("reste-resnet20-cifar10", ["train.epochs=10", "data.root=/data/cifar10"])

A recipe name is looked up in onebit's recipe folder (``onebit list-recipes``); a path to
a YAML file works too.  Every recipe is merged over :data:`DEFAULTS`, so a recipe only
says what differs.  An override may only set a key that exists (in the recipe or the
defaults), with a value of a compatible type (YAML syntax: ``1e-3``, ``true``, ``null``,
``{name: reste, o_end: 3}``); anything else is a one-line ValueError.
"""
from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any, Iterable

import yaml


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but reading 1e-3 as a float (YAML 1.2), not as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)$|^[-+]?[0-9][0-9_]*\.[0-9_]*$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"

DEFAULTS: dict = {
    "name": None,
    "description": "",
    "seed": 0,
    "model": {"name": None},
    "data": {
        "name": "sample",            # sample | folder | cifar10 | cifar100 | synthetic
        "root": None,
        "val_split": None,           # e.g. {per_class: 500, seed: 0}
        "train_transform": "cifar",  # cifar | imagenet | none
        "eval_transform": "cifar",   # cifar | imagenet | none
        "image_size": 32,
        "mean": None,                # null: the data set's standard statistics
        "std": None,
        "randaugment": None,         # e.g. {num_ops: 2, magnitude: 7, magnitude_std: 0.5, increasing: true, ops: timm}
        "mixup": 0.0,
        "cutmix": 0.0,
        "download": False,           # cifar10/cifar100: fetch where a network exists
        "n": None,                   # synthetic: training images, validation images, classes
        "val_n": None,
        "num_classes": None,
        "train_per_class": None,     # a seeded per-class subset of the training images (null: all)
    },
    "train": {
        "epochs": 1,
        "batch_size": 128,
        "eval_batch_size": 256,
        "optimizer": "sgd",          # sgd | adam | adamw
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "betas": [0.9, 0.999],
        "weight_decay": 1e-4,        # real-valued weights (conv / linear)
        "binary_weight_decay": None, # latent binary weights; null = same as weight_decay
        "norm_bias_weight_decay": 0.0,  # BN, biases, other 1-D parameters (BNext: as weight_decay)
        "warmup_epochs": 0,
        "warmup_lr": 0.0,
        "min_lr": 0.0,
        "label_smoothing": 0.0,
        "grad_clip": None,
        "amp": False,                # mixed precision (bf16 autocast), GPU only
        "compile": False,            # torch.compile the training forward (CPU: 2x for BinaryViT / ReActNet, slower for Bi-Real)
        "device": "auto",            # auto (cuda if available) | cpu | cuda
        "progress": "epoch",         # when schedules advance: epoch | step
        "threads": None,             # torch threads; null: torch's default
        "log_every": 50,
        "tensorboard": False,
        "indicators": False,         # log ReSTE's indicators each epoch (onebit's and the authors' definitions)
    },
    "kd": None,                      # {teacher: PATH | zoo:NAME | registry name, temperature, alpha, loss,
                                     #  compile (the teacher alone; null: as train.compile)}
    "stages": None,                  # two-stage training: list of {name, epochs, set: {key: value}}
    "overrides": [],                 # filled by load_recipe: the command-line overrides applied
}


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def with_defaults(recipe: dict) -> dict:
    """A saved recipe (a checkpoint's) with the keys added to DEFAULTS since it was written, at their
    defaults, so that a run started by an older onebit resumes under this one."""
    return _merge(DEFAULTS, recipe)


def recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ValueError(f"recipe file {name_or_path!r} does not exist")
        return p
    p = RECIPE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ValueError(f"unknown recipe {name_or_path!r}; available: {', '.join(list_recipes())} "
                         f"(or give a path to a .yaml file)")
    return p


NUMBER_OR_NAME = ("model.alpha_init",)  # options that take a number or a name ("keys")


def _check_type(key: str, old: Any, new: Any, where: str = "override") -> Any:
    """New value for ``key`` if its type is compatible with the old one (``where``: the override or
    the recipe file that sets it, for the error message)."""
    if old is None or new is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return float(new) if isinstance(old, float) else (new if isinstance(new, int) else _int_or_fail(key, new, where))
    elif isinstance(old, str) and isinstance(new, str):
        return new
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(new)
    elif isinstance(old, dict) and isinstance(new, dict):
        return new
    elif isinstance(old, (str, dict)) and isinstance(new, (str, dict)):  # binarizer specs: name or dict
        return new
    elif key in NUMBER_OR_NAME and isinstance(old, (int, float, str)) and isinstance(new, (int, float, str)):
        return new
    raise ValueError(f"{where} {key}={new!r}: expected {_a(type(old).__name__)} like {old!r}, "
                     f"got {_a(type(new).__name__)}")


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _int_or_fail(key: str, v: float, where: str = "override") -> int:
    if float(v).is_integer():
        return int(v)
    raise ValueError(f"{where} {key}={v!r}: expected an integer")


def apply_overrides(recipe: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` strings (values in YAML syntax), checking keys and types."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"override {key}: value {text!r} is not valid YAML ({e.problem})") from None
        node, parts = recipe, key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # a list entry by its index: stages.0.epochs
                node = node[_index(node, part, parts[:i + 1], item)]
                continue
            if not isinstance(node.get(part), (dict, list)):
                if node.get(part) is None and part in node:
                    node[part] = {}
                else:
                    raise ValueError(f"unknown recipe key {'.'.join(parts[:i + 1])!r} in override {item!r}")
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            i = _index(node, last, parts, item)
            node[i] = _check_type(key, node[i], value)
        elif last not in node:
            # open sections (model options, kd, data.val_split) accept new keys
            if not _open_section(parts[:-1]):
                raise ValueError(f"unknown recipe key {key!r}; known keys here: {', '.join(sorted(node))}")
            node[last] = value
        else:
            node[last] = _check_type(key, node[last], value)
    return recipe


def _index(node: list, part: str, path: list[str], item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"override {item!r}: {'.'.join(path)} is not an entry of a {len(node)}-entry list "
                         f"(indices 0 to {len(node) - 1})")
    return int(part)


def _open_section(path: list[str]) -> bool:
    return bool(path) and path[0] in ("model", "kd", "stages") or path[:2] in (["data", "val_split"],
                                                                               ["data", "randaugment"])


def load_recipe(name_or_path: str, overrides: Iterable[str] = ()) -> dict:
    """The recipe merged over the defaults, with overrides applied and checked."""
    path = recipe_path(name_or_path)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"recipe {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"recipe {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping")
    _refuse_unknown(raw, DEFAULTS, f"recipe {path} has unknown top-level keys")
    for section in ("data", "train"):
        _refuse_unknown(raw.get(section) or {}, DEFAULTS[section], f"recipe {path}: unknown {section} keys")
        for key, value in (raw.get(section) or {}).items():
            raw[section][key] = _check_type(f"{section}.{key}", DEFAULTS[section][key], value, f"recipe {path}:")
    recipe = _merge(DEFAULTS, raw)
    recipe["name"] = recipe["name"] or path.stem
    overrides = list(overrides)
    recipe = apply_overrides(recipe, overrides)
    if recipe.get("stages") and any(o.split("=", 1)[0].strip() == "train.epochs" for o in overrides):
        n = len(recipe["stages"])
        raise ValueError(f"recipe {recipe['name']!r} trains in {n} stages, each with its own epochs: set them with "
                         + " ".join(f"--set stages.{i}.epochs=E" for i in range(n)) + " instead of train.epochs")
    recipe["overrides"] = overrides
    if not recipe["model"].get("name"):
        raise ValueError(f"recipe {path} names no model (model.name)")
    check_values(recipe)
    return recipe


def _refuse_unknown(keys, known, what: str) -> None:
    bad = set(keys) - set(known)
    if bad:
        raise ValueError(f"{what} {sorted(bad)}; known: {', '.join(sorted(known))}")


DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("epoch", "step")
VAL_SPLIT_KEYS = ("per_class", "val_count", "seed")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rgb(v, positive: bool = False) -> bool:
    """Three numbers (the loader gives RGB images: grayscale files are converted)."""
    return isinstance(v, list) and len(v) == 3 and all(_is_num(x) and (x > 0 or not positive) for x in v)


# keys whose default is null, so that _check_type cannot take their type from the default: (what, test)
NULLABLE = {
    "data.root": ("a path", lambda v: isinstance(v, str) and v != ""),
    "data.mean": ("a list of 3 numbers, one per RGB channel", _rgb),
    "data.std": ("a list of 3 positive numbers, one per RGB channel", lambda v: _rgb(v, positive=True)),
    "data.n": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "data.val_n": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "data.num_classes": ("an integer >= 2", lambda v: _is_int(v) and v >= 2),
    "data.train_per_class": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "train.binary_weight_decay": ("a number >= 0", lambda v: _is_num(v) and v >= 0),
    "train.grad_clip": ("a number > 0", lambda v: _is_num(v) and v > 0),
    "train.threads": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
}


def _check_mapping(value, key: str, known, example: str) -> None:
    """An open section (data.val_split, data.randaugment): null or a mapping of known keys."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a mapping like {example}, got {value!r}")
    bad = sorted(str(k) for k in value if k not in known)
    if bad:
        colon = " (YAML needs a space after each colon: " + example + ")" if any(":" in k for k in bad) else ""
        raise ValueError(f"unknown {key} keys {bad}; known: {', '.join(known)}{colon}")
KD_KEYS = ("teacher", "temperature", "alpha", "loss", "compile")  # what the trainer reads (LogitsKD, Teacher)


def check_values(recipe: dict) -> None:
    """Values the types alone do not rule out: counts below 1, a device that is not one."""
    t = recipe["train"]
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if t[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {t[key]}")
    for key in ("warmup_epochs", "weight_decay", "norm_bias_weight_decay"):
        if t[key] < 0:
            raise ValueError(f"train.{key} must be >= 0, got {t[key]}")
    for key, (what, ok) in NULLABLE.items():
        section, name = key.split(".")
        value = recipe[section][name]
        if value is not None and not ok(value):
            raise ValueError(f"{key} must be {what} (or null), got {value!r}")
    if t["progress"] not in PROGRESS:
        raise ValueError(f"train.progress must be one of {', '.join(PROGRESS)}, got {t['progress']!r}")
    _check_mapping(recipe["data"]["val_split"], "data.val_split", VAL_SPLIT_KEYS, "{per_class: 500, seed: 0}")
    vs = recipe["data"]["val_split"]
    if vs is not None:
        if ("per_class" in vs) == ("val_count" in vs):
            raise ValueError(f"data.val_split needs exactly one of per_class and val_count, got {vs!r}")
        for key, value in vs.items():
            low = 0 if key == "seed" else 1  # an empty validation split would fail after the first epoch
            if not _is_int(value) or value < low:
                raise ValueError(f"data.val_split.{key} must be an integer >= {low}, got {value!r}")
    from ..data.transforms import RandAugment
    _check_mapping(recipe["data"]["randaugment"], "data.randaugment",
                   tuple(inspect.signature(RandAugment).parameters), "{num_ops: 2, magnitude: 9}")
    dev = str(t["device"])
    if dev not in DEVICES and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ValueError(f"train.device must be one of {', '.join(DEVICES)} or cuda:N, got {dev!r}")
    kd = recipe.get("kd")
    if kd is not None:
        if not isinstance(kd, dict):
            raise ValueError(f"kd must be a mapping like {{teacher: zoo:NAME, temperature: 1.0, alpha: 1.0}}, got {kd!r}")
        _refuse_unknown(kd, KD_KEYS, "unknown kd keys")
        for key in ("temperature", "alpha"):
            if key in kd and (isinstance(kd[key], bool) or not isinstance(kd[key], (int, float))):
                raise ValueError(f"kd.{key} must be a number, got {kd[key]!r}")
        if kd.get("compile") is not None and not isinstance(kd["compile"], bool):
            raise ValueError(f"kd.compile must be true, false or null (null: as train.compile), got {kd['compile']!r}")
    for i, st in enumerate(recipe.get("stages") or []):
        e = st.get("epochs") if isinstance(st, dict) else None
        if e is not None and (not isinstance(e, int) or e < 1):
            raise ValueError(f"stages[{i}].epochs must be an integer >= 1, got {e!r}")
