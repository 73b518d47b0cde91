"""`holdout_split`: a seeded, stratified train/validation split of a labelled set."""

from __future__ import annotations

import numpy as np

from .errors import DataError


def holdout_split(labels, val_count: int | None = None, per_class: int | None = None, seed: int = 0,
                  class_names=None, hint: str = "hold out fewer (data.val_split) or add images to that class"):
    """Split indices into (train_idx, val_idx), stratified by class.

    Give exactly one of ``per_class`` (that many validation images from every
    class) or ``val_count`` (a total, spread evenly over the classes; the first
    ``val_count % num_classes`` classes in label order get one extra). Within
    each class the validation images are a uniform draw from
    ``numpy.random.default_rng(seed)``, taken class by class in label order, so
    the result depends only on ``labels`` and ``seed``.

    Both index arrays are int64 and sorted ascending. ``class_names`` (label -> name) only
    makes the error for a class with too few images name it; ``hint`` is that error's advice.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if (val_count is None) == (per_class is None):
        raise ValueError("give exactly one of val_count or per_class")
    classes = np.unique(labels)
    if per_class is not None:
        if per_class < 0:
            raise ValueError(f"per_class must be >= 0, got {per_class}")
        counts = {int(c): int(per_class) for c in classes}
    else:
        if val_count < 0:
            raise ValueError(f"val_count must be >= 0, got {val_count}")
        base, extra = divmod(int(val_count), max(len(classes), 1))
        counts = {int(c): base + (1 if i < extra else 0) for i, c in enumerate(classes)}

    rng = np.random.default_rng(seed)
    val_parts = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        k = counts[int(c)]
        if k > len(members):
            label = f"{class_names[int(c)]!r} ({int(c)})" if class_names is not None else str(int(c))
            raise DataError(
                f"class {label} has only {len(members)} images, cannot hold out {k} of them; {hint}"
            )
        val_parts.append(rng.permutation(members)[:k])

    is_val = np.zeros(len(labels), dtype=bool)
    if val_parts:
        is_val[np.concatenate(val_parts)] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)
