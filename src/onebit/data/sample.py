"""The embedded CIFAR-10 sample: 5,000 train + 1,000 val original JPEGs in one tar file.

See SAMPLE.md for how it was drawn (``scripts/make_sample.py`` rebuilds it).
Members are read straight from the tar; nothing is extracted to disk.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset
from .errors import DataError
from .folder import decode_image_bytes, stack_if_same_size

SAMPLE_PATH = Path(__file__).with_name("cifar10_sample.tar")

# CIFAR-10's class order (batches.meta), which is also the sorted folder order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


def load_sample(split: str = "train", path=SAMPLE_PATH) -> ArrayDataset:
    """Decode the ``train`` (5,000 images) or ``val`` (1,000) part of the embedded sample.

    Members are named ``<split>/<class>/<file>.jpg``; images come in sorted
    member order, labels follow CIFAR-10's class order.
    """
    if split not in ("train", "val"):
        raise DataError(f"the sample has splits 'train' and 'val', not {split!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embedded sample {path} is missing; rebuild it with scripts/make_sample.py")
    index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    images, labels = [], []
    with tarfile.open(path, "r:") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(split + "/")),
                         key=lambda m: m.name)
        for member in members:
            parts = member.name.split("/")
            if len(parts) != 3 or parts[1] not in index:
                raise DataError(f"unexpected member {member.name} in {path}; expected {split}/<class>/<file>")
            images.append(decode_image_bytes(tar.extractfile(member).read(), f"{path}:{member.name}"))
            labels.append(index[parts[1]])
    if not images:
        raise DataError(f"no '{split}/' images in {path}")
    return ArrayDataset(stack_if_same_size(images), np.asarray(labels, dtype=np.int64), CIFAR10_CLASSES)
