"""Model families and the registry: ``create_model(name, **kwargs)``, ``list_models()``."""
from . import binaryvit, resnet  # noqa: F401  (registers the families)
from .blocks import BasicBlock, BinaryBasicBlock, BinaryUnit, Shortcut
from .registry import create_model, list_models, register_model
from .resnet import ResNet, binary_resnet

__all__ = ["BasicBlock", "BinaryBasicBlock", "BinaryUnit", "ResNet", "Shortcut", "binary_resnet",
           "create_model", "list_models", "register_model"]
