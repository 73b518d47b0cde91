"""Image folders: ``ROOT/<split>/<class name>/<image file>``, decoded once into memory."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .dataset import ArrayDataset
from .errors import DataError
from .split import holdout_split  # noqa: F401  (re-exported: splits are usually made of folder data)

LAYOUT = "ROOT/{split}/<class name>/<image file>  (e.g. ROOT/{split}/cat/0001.jpg)"


def image_extensions() -> set[str]:
    """Lower-case file extensions (with the dot) that Pillow can open."""
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def list_image_folder(root, split: str, class_names: Sequence[str] | None = None):
    """List the images of one split without decoding them.

    Returns ``(paths, labels, class_names)``: paths in sorted class-folder then
    sorted file-name order, int64 labels, and the class list the labels index.
    Without ``class_names`` the classes are the sorted folder names; with it,
    labels follow its order, every folder must be named in it, and classes
    without a folder are allowed. Files whose extension Pillow does not know
    are skipped, as are hidden files and nested folders.
    """
    root = Path(root)
    split_dir = root / split
    layout = LAYOUT.format(split=split)
    if not split_dir.is_dir():
        found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if found:
            where = f"found folders {found}"
        else:
            files = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
            if files:  # images straight in ROOT, say: name a few
                where = f"it holds files but no folders ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
            else:
                where = ("it is empty" if root.is_dir() else
                         "it is a file, not a folder" if root.exists() else "it does not exist")
        raise DataError(
            f"no '{split}' folder in {root} ({where}). Expected the layout {layout}: "
            f"put the images of each class in {split_dir}/<class name>/."
        )
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"no class folders in {split_dir}. Expected the layout {layout}: one sub-folder per "
            f"class, named after the class, holding that class's images."
        )

    if class_names is None:
        names = [p.name for p in class_dirs]
    else:
        names = list(class_names)
        unknown = [p.name for p in class_dirs if p.name not in names]
        if unknown:
            raise DataError(
                f"class folder(s) {unknown} in {split_dir} are not among the expected classes "
                f"{names}. Rename or remove the folder(s) so that the classes match."
            )
    index = {name: i for i, name in enumerate(names)}

    extensions = image_extensions()
    paths, labels = [], []
    for class_dir in class_dirs:
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in extensions:
                paths.append(path)
                labels.append(index[class_dir.name])
    if not paths:
        raise DataError(
            f"no image files found under {split_dir}. Expected the layout {layout}; "
            f"any format Pillow reads is accepted."
        )
    return paths, np.asarray(labels, dtype=np.int64), names


def decode_image_bytes(data: bytes, name) -> np.ndarray:
    """Decode one encoded image to an RGB uint8 array of shape (H, W, 3).

    ``name`` (a path or archive member name) is used in error messages and its
    extension as a format hint, which saves Pillow probing every format.
    """
    hint = Image.registered_extensions().get(Path(str(name)).suffix.lower())
    try:
        try:
            image = Image.open(io.BytesIO(data), formats=[hint] if hint else None)
        except UnidentifiedImageError:  # wrong extension: let Pillow probe all formats
            image = Image.open(io.BytesIO(data))
        with image:
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.array(image, dtype=np.uint8)  # (a writable copy: torch.from_numpy warns on read-only arrays)
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {name}: not an image format Pillow can decode (corrupt or not an "
                        f"image); remove or replace the file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {name}: {error}; remove or replace the file") from error


def decode_image(path) -> np.ndarray:
    """Decode one image file to an RGB uint8 array of shape (H, W, 3)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read image {path}: {error}") from error
    return decode_image_bytes(data, path)


def decode_images(paths, num_threads: int = 1) -> list[np.ndarray]:
    """Decode many files, optionally with a thread pool.

    Pillow releases the GIL while decoding, so threads pay off for large
    images; for tiny ones (CIFAR's 32x32) per-file Python overhead dominates and
    one thread is fastest (measured: ~10 s for 50,000 CIFAR JPEGs on 2 cores).
    """
    if num_threads <= 1 or len(paths) < 64:
        return [decode_image(p) for p in paths]
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        return list(pool.map(decode_image, paths, chunksize=256))


def stack_if_same_size(images: list[np.ndarray]):
    """One (N, H, W, C) array when all images share a shape, else the list unchanged."""
    if images and all(image.shape == images[0].shape for image in images):
        return np.stack(images)
    return images


def load_image_folder(root, split: str, class_names: Sequence[str] | None = None,
                      num_threads: int = 1) -> ArrayDataset:
    """Decode every image of ``ROOT/<split>/<class>/*`` into an :class:`ArrayDataset`.

    Images are converted to RGB. Same-size images are stacked into one uint8
    (N, H, W, 3) array; mixed sizes are kept as a list of (H, W, 3) arrays (give
    the loader a resizing/cropping transform then). See :func:`list_image_folder`
    for how classes are matched. An unreadable image raises :class:`DataError`
    naming the file.
    """
    paths, labels, names = list_image_folder(root, split, class_names)
    images = decode_images(paths, num_threads)
    return ArrayDataset(stack_if_same_size(images), labels, names)
