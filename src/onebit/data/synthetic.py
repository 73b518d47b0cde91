"""`synthetic_dataset`: small, learnable random images for tests and smoke runs."""

from __future__ import annotations

import numpy as np

from .dataset import ArrayDataset


def synthetic_dataset(n: int, num_classes: int = 10, image_size: int = 32, channels: int = 3,
                      seed: int = 0, noise: float = 40.0) -> ArrayDataset:
    """``n`` uint8 images of shape (image_size, image_size, channels).

    Each class has its own mean colour (drawn once from the seed); an image is
    its class colour plus Gaussian pixel noise of standard deviation ``noise``
    (in 0..255 units), so a linear model on mean pixel values can learn it.
    Labels are balanced (``i % num_classes``, shuffled). Same arguments, same data.
    """
    rng = np.random.default_rng(seed)
    class_colours = rng.uniform(32, 224, size=(num_classes, channels))
    labels = rng.permutation(np.arange(n) % num_classes)
    pixels = class_colours[labels][:, None, None, :] + rng.normal(
        0.0, noise, size=(n, image_size, image_size, channels)
    )
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return ArrayDataset(images, labels, [f"class_{i}" for i in range(num_classes)])
