"""onebit: 1-bit neural networks for vision.

    import onebit
    model = onebit.create_model("reactnet_resnet20")
    onebit.set_progress(model, 0.5)      # move every estimator schedule to mid-training
"""
from . import binarize, layers, models
from .binarize import set_progress
from .models import create_model, list_models

__version__ = "0.1.0"

_LAZY = ("analysis", "data", "deploy", "train", "zoo")


def __getattr__(name):  # heavier sub-packages load on first use: onebit.analysis.complexity(...)
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
__all__ = ["binarize", "create_model", "layers", "list_models", "models", "set_progress", "__version__"]
