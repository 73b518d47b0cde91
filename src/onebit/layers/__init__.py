"""nn.Modules built from the binarizers: drop-in binary layers and ReActNet's shifts."""
from ..binarize.react import LearnableBias, RPReLU, RSign
from .binary import BinaryConv2d, BinaryLayer, BinaryLinear

__all__ = ["BinaryConv2d", "BinaryLayer", "BinaryLinear", "LearnableBias", "RPReLU", "RSign"]
