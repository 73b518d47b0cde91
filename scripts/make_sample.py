"""Build src/onebit/data/cifar10_sample.tar, the embedded CIFAR-10 sample.

The source is the CIFAR-10 training set as JPEGs in class folders
(``SOURCE/train/<class>/NNNN.jpg``, 5,000 per class), unpacked from
shared/data/cifar10-jpeg-train.tar.gz when ``SOURCE`` does not exist yet.

The draw, all with seed 0:

1. The project's real validation split: ``holdout_split(labels, per_class=500,
   seed=0)`` over the 50,000 images in sorted class / file-name order.
2. From each class, with ``numpy.random.default_rng(0)`` taken class by class in
   label order: 100 images drawn from that class's part of the validation
   split (the sample's ``val/``), then 500 from its part of the remaining
   training images (the sample's ``train/``).

The original JPEG bytes are stored unchanged, under ``train/<class>/<file>``
and ``val/<class>/<file>``, in sorted order with fixed metadata, so the same
source always gives a byte-identical tar.

    PYTHONPATH=src python scripts/make_sample.py [--source /tmp/cifar] [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from onebit.data.folder import list_image_folder
from onebit.data.split import holdout_split

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
OUT = REPO / "src" / "onebit" / "data" / "cifar10_sample.tar"
TRAIN_PER_CLASS, VAL_PER_CLASS, PROJECT_VAL_PER_CLASS, SEED = 500, 100, 500, 0


def ensure_source(source: Path, archive: Path) -> None:
    if (source / "train").is_dir():
        return
    print(f"unpacking {archive} into {source}")
    source.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(source, filter="data")


def draw(labels: np.ndarray):
    """(sample train indices, sample val indices) into the sorted file list."""
    project_train, project_val = holdout_split(labels, per_class=PROJECT_VAL_PER_CLASS, seed=SEED)
    rng = np.random.default_rng(SEED)
    train, val = [], []
    for c in np.unique(labels):
        val.append(rng.choice(project_val[labels[project_val] == c], VAL_PER_CLASS, replace=False))
        train.append(rng.choice(project_train[labels[project_train] == c], TRAIN_PER_CLASS, replace=False))
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def write_tar(out: Path, entries: list[tuple[str, bytes]]) -> None:
    tmp = out.with_suffix(".tar.part")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=Path("/tmp/cifar"))
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    ensure_source(args.source, args.archive)
    paths, labels, class_names = list_image_folder(args.source, "train")
    assert len(paths) == 50_000 and len(class_names) == 10, (len(paths), class_names)
    train_idx, val_idx = draw(labels)
    assert not set(train_idx) & set(val_idx)

    entries = []
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            entries.append((f"{split}/{class_names[labels[i]]}/{paths[i].name}", paths[i].read_bytes()))
    write_tar(args.out, entries)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {len(train_idx)} train + {len(val_idx)} val images, "
          f"{args.out.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
