"""Deployment: the C++ XNOR-popcount engine and bit-packed twins of the binary layers.

    import onebit, onebit.deploy
    model = onebit.create_model("reactnet_resnet20").eval()
    packed = onebit.deploy.pack(model)              # same logits, bit-packed convolutions
    onebit.deploy.set_num_threads(2)                # engine threads (default: torch's)
    onebit.deploy.cpu_features()                    # {'avx2': True, 'avx512_vpopcntdq': False, ...}

The engine (``onebit._engine``) is compiled by the package build; its AVX2 and AVX-512 kernels
are chosen at run time from the CPU's features (``available_paths()``, ``set_path()``).
"""
from .engine import (available_paths, best_path, bgemm, conv2d, cpu_features, get_num_threads, get_path, linear,
                     pack_conv_weight, pack_nchw, pack_rows, set_num_threads, set_path, split_weights,
                     weight_layout)
from .packed import NotPackable, PackedBinaryConv2d, PackedBinaryLinear, PackWarning, pack

__all__ = [
    "NotPackable", "PackWarning", "PackedBinaryConv2d", "PackedBinaryLinear", "available_paths", "best_path",
    "bgemm", "conv2d", "cpu_features", "get_num_threads", "get_path", "linear", "pack", "pack_conv_weight",
    "pack_nchw", "pack_rows", "set_num_threads", "set_path", "split_weights", "weight_layout",
]
