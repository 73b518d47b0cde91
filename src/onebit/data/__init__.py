"""Data for onebit: image folders, CIFAR pickles, the embedded sample, transforms, a fast loader."""

from .cifar import download_cifar, load_cifar
from .dataset import ArrayDataset
from .errors import DataError
from .folder import list_image_folder, load_image_folder
from .loader import BatchLoader, build_dataset
from .sample import CIFAR10_CLASSES, load_sample
from .split import holdout_split
from .synthetic import synthetic_dataset
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Compose,
    Normalize,
    RandAugment,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    cifar_eval_transform,
    cifar_train_transform,
    cutmix,
    mixup,
)

__all__ = [
    "ArrayDataset", "BatchLoader", "DataError", "build_dataset",
    "load_image_folder", "list_image_folder", "holdout_split",
    "load_cifar", "download_cifar", "load_sample", "CIFAR10_CLASSES", "synthetic_dataset",
    "Compose", "RandomCrop", "RandomHorizontalFlip", "RandomResizedCrop", "Resize", "CenterCrop",
    "Normalize", "RandAugment", "mixup", "cutmix", "cifar_train_transform", "cifar_eval_transform",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
]
