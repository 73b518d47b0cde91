"""`ArrayDataset`: decoded images and integer labels held in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .errors import DataError

Images = Union[np.ndarray, list]


@dataclass
class ArrayDataset:
    """Images, labels and class names, all in memory.

    ``images`` is either one uint8 array of shape (N, H, W, C) when every image
    has the same size, or a list of N uint8 arrays of shape (H, W, C) when the
    sizes differ. ``labels`` is an int64 array of shape (N,) indexing
    ``class_names``.
    """

    images: Images
    labels: np.ndarray
    class_names: Sequence[str]

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.class_names = list(self.class_names)
        if self.labels.ndim != 1:
            raise DataError(f"labels must be one-dimensional, got shape {self.labels.shape}")
        if isinstance(self.images, np.ndarray):
            if self.images.dtype != np.uint8 or self.images.ndim != 4:
                raise DataError(
                    f"images must be a uint8 array of shape (N, H, W, C), got {self.images.dtype} "
                    f"{self.images.shape}"
                )
        else:
            self.images = list(self.images)
            for i, image in enumerate(self.images):
                if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
                    raise DataError(f"image {i} must be a uint8 array of shape (H, W, C)")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(
                f"labels must lie in [0, {len(self.class_names)}), got "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        """One (image HWC uint8, label int) pair."""
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_stacked(self) -> bool:
        """True when all images share one size and sit in a single array."""
        return isinstance(self.images, np.ndarray)

    def in_class_order(self, class_names: Sequence[str]) -> "ArrayDataset":
        """The same images with labels numbered in ``class_names``' order (classes matched by name:
        a model's order may differ from the data's); itself when the orders agree."""
        if list(self.class_names) == list(class_names):
            return self
        if sorted(self.class_names) != sorted(class_names):
            raise DataError(f"the data's classes ({', '.join(self.class_names)}) are not the model's "
                            f"({', '.join(class_names)})")
        order = np.array([list(class_names).index(n) for n in self.class_names])
        return ArrayDataset(self.images, order[self.labels], list(class_names))

    def subset(self, indices) -> "ArrayDataset":
        """A new dataset holding the given indices, in that order (copies the images)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.is_stacked:
            images = self.images[indices]
        else:
            images = [self.images[i] for i in indices]
        return ArrayDataset(images, self.labels[indices], self.class_names)

    def class_counts(self) -> np.ndarray:
        """Number of images of each class, shape (num_classes,)."""
        return np.bincount(self.labels, minlength=self.num_classes)
