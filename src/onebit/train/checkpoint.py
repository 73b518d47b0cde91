"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values:

- ``model``: the state dict; ``meta``: what rebuilds the model without the recipe:
  ``{"model": registry name, "model_kwargs": ..., "class_names", "mean", "std",
  "input_size": [C, H, W], "progress": t}``;
- for resuming: ``optimizer``, ``epoch`` and ``batch`` (the next to run), ``stage``,
  ``rng`` (torch CPU RNG state), ``running`` (partial-epoch sums), ``best``, ``history``;
- ``recipe``: the recipe it was trained with.

Writing goes to a temporary file in the same folder, flushed to disk, then renamed over
the target, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch
import torch.nn as nn


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path, write) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it and rename it over ``path``:
    a reader sees the old file or the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: give it a new file's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: dict, path) -> None:
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a folder; give a checkpoint file in it (e.g. best.pt)")
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} is not a regular file (a device, pipe or socket); give a "
                         f"checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a pickle with objects other than tensors and plain data
            raise ValueError(f"{str(path)!r} is not an onebit checkpoint: it holds Python objects that onebit does "
                             f"not load (only tensors and plain data are read, never arbitrary pickles)") from None
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: it is not a PyTorch checkpoint file, or it is "
                         f"corrupt; give a run's best.pt or last.pt") from None
    except Exception as e:  # truncated zip archive, not a torch file at all, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if len(reason) > 80:
            reason = reason[:80].rsplit(" ", 1)[0] + " ..."
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: it is truncated, corrupt or not a PyTorch "
                         f"checkpoint ({type(e).__name__}: {reason}); copy it again or give a run's best.pt / "
                         f"last.pt") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise ValueError(f"{str(path)!r} is not an onebit checkpoint (no 'model' and 'meta' entries)")
    return ckpt


def build_model(meta: dict) -> nn.Module:
    from ..models import create_model
    from ..binarize import set_progress
    model = create_model(meta["model"], **meta.get("model_kwargs", {}))
    set_progress(model, float(meta.get("progress", 1.0)))
    return model


def load_model(path) -> tuple[nn.Module, dict]:
    """The model stored in a checkpoint, in eval mode, and the checkpoint's meta."""
    ckpt = load(path)
    meta = ckpt["meta"]
    model = build_model(meta)
    load_state(model, ckpt["model"], str(path))
    recipe = ckpt.get("recipe")
    if isinstance(recipe, dict) and "data" not in meta:  # where its validation images came from
        meta = {**meta, "data": {"val_split": (recipe.get("data") or {}).get("val_split")}}
    return model.eval(), meta


def load_state(model: nn.Module, state: dict, source: str) -> None:
    """load_state_dict with a one-line error when the checkpoint is from another model."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}), "
                  f"{len(wrong)} of another shape (e.g. {wrong[:2]})")
        raise ValueError(f"{source} holds weights of another model: {detail}")
    model.load_state_dict(state)
