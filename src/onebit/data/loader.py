"""`BatchLoader`: fast in-memory batches with batch-level transforms; `build_dataset` from a spec.

Determinism: the order of an epoch depends only on (seed, epoch), and the
random transforms of batch ``b`` use a generator seeded from (seed, epoch, b).
So batch ``b`` of epoch ``e`` is the same whether the epoch is run from the
start or resumed with ``start_batch=b``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .cifar import load_cifar
from .dataset import ArrayDataset
from .errors import DataError
from .folder import load_image_folder
from .sample import load_sample
from .split import holdout_split
from .synthetic import synthetic_dataset
from .transforms import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["ArrayDataset", "BatchLoader", "build_dataset", "CIFAR10_MEAN", "CIFAR10_STD"]


def _seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative ints."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class BatchLoader:
    """Iterate over an :class:`ArrayDataset` in batches of (float NCHW tensor, int64 labels).

    ``transform(batch, generator)`` gets a uint8 NCHW batch. With same-size
    images it is called once per batch (so vectorised transforms run on the
    whole batch); with mixed sizes it is called per image (as a batch of one)
    and must bring every image to one size. uint8 results are scaled to 0..1.

    Use ``set_epoch(epoch)`` before each epoch for a fresh shuffle, and
    ``start_batch`` (here or in ``set_epoch``) to resume mid-epoch.
    """

    def __init__(self, dataset: ArrayDataset, batch_size: int, shuffle: bool = False,
                 transform: Callable | None = None, seed: int = 0, drop_last: bool = False,
                 start_batch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.transform = transform
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = int(start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (which fixes order and augmentation) and the batch to start at."""
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> np.ndarray:
        """The sample indices of the current epoch, in visiting order."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng(_seed(self.seed, self.epoch)).permutation(n)

    def batch_indices(self, batch: int, order: np.ndarray | None = None) -> np.ndarray:
        order = self.order() if order is None else order
        return order[batch * self.batch_size:(batch + 1) * self.batch_size]

    def make_batch(self, indices: np.ndarray, batch: int):
        """Gather, transform and convert the given samples; ``batch`` seeds the transform."""
        generator = torch.Generator().manual_seed(_seed(self.seed, self.epoch, batch))
        labels = torch.from_numpy(self.dataset.labels[indices])
        if self.dataset.is_stacked:
            x = torch.from_numpy(self.dataset.images[indices]).permute(0, 3, 1, 2)
            if self.transform is not None:
                x = self.transform(x, generator)
        else:
            images = [torch.from_numpy(self.dataset.images[i]).permute(2, 0, 1)[None] for i in indices]
            if self.transform is not None:
                images = [self.transform(image, generator) for image in images]
            sizes = {tuple(image.shape[1:]) for image in images}
            if len(sizes) > 1:
                raise DataError(
                    f"images of different sizes {sorted(sizes)[:3]}... cannot form a batch; give the "
                    f"loader a transform that fixes the size (Resize + CenterCrop, RandomResizedCrop)"
                )
            x = torch.cat(images)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x.contiguous(), labels

    def __iter__(self):
        order = self.order()
        for batch in range(self.start_batch, len(self)):
            yield self.make_batch(self.batch_indices(batch, order), batch)


# ----------------------------------------------------------------------------- datasets from a spec

def holdout(train: ArrayDataset, val_split: dict, hint: str | None = None):
    """(train, val): ``train`` split by a recipe's ``val_split`` (val_count or per_class, seed);
    ``hint``: the advice of the error for a class with too few images (default: the recipe's)."""
    train_idx, val_idx = holdout_split(
        train.labels,
        val_count=val_split.get("val_count"),
        per_class=val_split.get("per_class"),
        seed=val_split.get("seed", 0),
        class_names=train.class_names,
        **({"hint": hint} if hint else {}),
    )
    return train.subset(train_idx), train.subset(val_idx)


def build_dataset(spec: dict):
    """(train_ds, val_ds) from a spec dict; ``val_ds`` may be None.  See :func:`_build_dataset`
    for the names; ``train_per_class`` (an int, or None for all) keeps a seeded, stratified subset
    of that many training images per class (drawn after the validation hold-out, with the
    hold-out's seed: the validation images stay the same), for reduced-budget experiments."""
    train, val = _build_dataset(spec)
    k = spec.get("train_per_class")
    if k is None:
        return train, val
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"data.train_per_class must be a positive integer or null, got {k!r}")
    counts = np.bincount(np.asarray(train.labels, dtype=np.int64))
    if k > counts[counts > 0].min():
        raise DataError(f"data.train_per_class={k} but a class has only {counts[counts > 0].min()} training "
                        f"images; choose at most that or null for all")
    _, keep = holdout_split(train.labels, per_class=k, seed=(spec.get("val_split") or {}).get("seed", 0))
    return train.subset(keep), val


def _build_dataset(spec: dict):
    """(train_ds, val_ds) from a spec dict; ``val_ds`` may be None.

    ``spec["name"]`` is one of:

    - ``"sample"``: the embedded CIFAR-10 sample (5,000 train / 1,000 val).
    - ``"folder"``: ``root`` with ``train/`` and, unless ``val_split`` is given,
      ``val/`` or else ``test/``; optional ``class_names``.
    - ``"cifar10"`` / ``"cifar100"``: pickles under ``root`` (``download``,
      ``verify``); validation is the official test split unless ``val_split``.
    - ``"synthetic"``: ``n`` (train, default 1000) + ``val_n`` (default 200)
      images, ``num_classes``, ``image_size``, ``channels``, ``seed``.

    ``val_split`` (e.g. ``{"per_class": 500, "seed": 0}`` or ``{"val_count":
    5000}``) holds a seeded, stratified validation set out of the training split
    (see :func:`holdout_split`); it is ignored for the sample, which has its own.
    """
    spec = dict(spec)
    name = spec.get("name", "sample")
    val_split = spec.get("val_split")

    if name == "sample":
        return load_sample("train"), load_sample("val")

    if name == "synthetic":
        n, val_n = int(spec.get("n", 1000)), int(spec.get("val_n", 200))
        full = synthetic_dataset(n + val_n, num_classes=spec.get("num_classes", 10),
                                 image_size=spec.get("image_size", 32), channels=spec.get("channels", 3),
                                 seed=spec.get("seed", 0))
        return holdout(full, val_split or {"val_count": val_n, "seed": spec.get("seed", 0)})

    if "root" not in spec:
        raise DataError(f"dataset spec {name!r} needs a 'root' folder")
    root = spec["root"]

    if name == "folder":
        train = load_image_folder(root, "train", spec.get("class_names"))
        if val_split:
            return holdout(train, val_split)
        for split in ("val", "test"):
            if (Path(root) / split).is_dir():
                return train, load_image_folder(root, split, train.class_names)
        return train, None

    if name in ("cifar10", "cifar100"):
        kwargs = dict(name=name, download=spec.get("download", False), verify=spec.get("verify", True))
        train = load_cifar(root, split="train", **kwargs)
        if val_split:
            return holdout(train, val_split)
        return train, load_cifar(root, split="test", **kwargs)

    raise DataError(f"unknown dataset name {name!r}; expected sample, folder, cifar10, cifar100 or synthetic")
