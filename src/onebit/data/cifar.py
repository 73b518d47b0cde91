"""CIFAR-10 / CIFAR-100 in the official python-pickle layout, with md5 verification.

Expected files (as unpacked from the official tarballs)::

    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

The pickles are read with a restricted unpickler that only rebuilds plain
containers and numpy arrays, and only after their md5 matches the official
checksum (unless ``verify=False``). Pickle is used for nothing else.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import ArrayDataset
from .errors import DataError


@dataclass(frozen=True)
class CifarInfo:
    folder: str  # folder inside ROOT that the tarball unpacks to
    url: str
    tar_md5: str
    splits: dict  # split name -> list of file names
    meta: str  # file holding the class names
    label_key: bytes  # key of the labels in each batch dict
    names_key: bytes  # key of the class names in the meta dict
    md5: dict  # file name -> official md5


CIFAR = {
    "cifar10": CifarInfo(
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        tar_md5="c58f30108f718f92721af3b95e74349a",
        splits={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    ),
    "cifar100": CifarInfo(
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        tar_md5="eb9058c3a382ffc7106e4002c42a8d85",
        splits={"train": ["train"], "test": ["test"]},
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    ),
}


def file_md5(path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes, numbers and numpy arrays; refuses any other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DataError(f"{path} is not a CIFAR pickle: {error}") from error


def _where_to_put(info: CifarInfo, root: Path, offer_download: bool = True) -> str:
    where = (f"Download {info.url} and unpack it into {root} "
             f"(so that {root / info.folder / info.meta} exists)")
    return where + (", or pass download=True (--set data.download=true)." if offer_download else ".")


def cifar_dir(root, name: str = "cifar10") -> Path:
    """The folder holding the pickles: ``ROOT/<folder>``, or ROOT itself if it is that folder."""
    info = _info(name)
    root = Path(root)
    return root if root.name == info.folder and not (root / info.folder).is_dir() else root / info.folder


def _info(name: str) -> CifarInfo:
    if name not in CIFAR:
        raise DataError(f"unknown CIFAR variant {name!r}; expected one of {sorted(CIFAR)}")
    return CIFAR[name]


def download_cifar(root, name: str = "cifar10", timeout: float = 60.0) -> Path:
    """Fetch and unpack the official tarball into ROOT; returns the pickle folder.

    The tarball goes to a temporary file in ROOT, is checked against its md5,
    then renamed and unpacked. Without network this raises :class:`DataError`
    saying where to put the files by hand.
    """
    info = _info(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tar_path = root / info.url.rsplit("/", 1)[1]
    if not (tar_path.is_file() and file_md5(tar_path) == info.tar_md5):
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=tar_path.name, suffix=".part")
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(info.url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
            if digest.hexdigest() != info.tar_md5:
                raise DataError(
                    f"downloaded {info.url} has md5 {digest.hexdigest()}, expected {info.tar_md5}. "
                    + _where_to_put(info, root, offer_download=False)
                )
            os.replace(tmp_name, tar_path)
        except (urllib.error.URLError, OSError) as error:
            message = f"could not download {info.url}: {error}. " + _where_to_put(info, root, False)
            raise DataError(message) from error
        finally:
            if os.path.exists(tmp_name):
                os.remove(tmp_name)
    with tarfile.open(tar_path, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:  # Python without extraction filters: the md5 above vouches for the archive
            tar.extractall(root)
    return root / info.folder


def load_cifar(root, name: str = "cifar10", split: str = "train", download: bool = False,
               verify: bool = True) -> ArrayDataset:
    """Load one split of CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels).

    Returns an :class:`ArrayDataset` with uint8 images of shape (N, 32, 32, 3).
    With ``verify`` (default) every file read must match the official md5;
    turn it off only for data you made yourself (e.g. test fixtures).
    """
    info = _info(name)
    if split not in info.splits:
        raise DataError(f"unknown split {split!r} for {name}; expected one of {sorted(info.splits)}")
    root = Path(root)
    folder = cifar_dir(root, name)
    files = info.splits[split] + [info.meta]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        folder = download_cifar(root, name)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{name} files {missing} not found in {folder}. " + _where_to_put(info, root))

    if verify:
        for f in files:
            got = file_md5(folder / f)
            if got != info.md5[f]:
                raise DataError(
                    f"{folder / f} has md5 {got}, expected {info.md5[f]} (the official {name} file): it is damaged "
                    f"or not the original. Delete {folder} and unpack {info.url} into {folder.parent} again "
                    f"(or delete it and set download=True: --set data.download=true)."
                )

    images, labels = [], []
    for f in info.splits[split]:
        batch = _unpickle(folder / f)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels.append(np.asarray(batch[info.label_key], dtype=np.int64))
        except (KeyError, TypeError) as error:
            raise DataError(f"{folder / f} lacks b'data' or {info.label_key!r}") from error
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    try:
        class_names = [n.decode() for n in _unpickle(folder / info.meta)[info.names_key]]
    except (KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{folder / info.meta} lacks {info.names_key!r}") from error
    return ArrayDataset(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), class_names)
