"""Deployment: the C++ XNOR-popcount engine and bit-packed twins of the binary layers.

    import onebit, onebit.deploy
    model = onebit.create_model("reactnet_resnet20").eval()
    packed = onebit.deploy.pack(model)              # same logits, bit-packed convolutions
    onebit.deploy.set_num_threads(2)                # engine threads (default: torch's)
    onebit.deploy.cpu_features()                    # {'avx2': True, 'avx512_vpopcntdq': False, ...}
    onebit.deploy.save(model, "net.packed.safetensors")  # the packed file (docs/deploy.md)
    model = onebit.deploy.load("net.packed.safetensors")

The engine (``onebit._engine``) is compiled by the package build; its AVX2 and AVX-512 kernels
are chosen at run time from the CPU's features (``available_paths()``, ``set_path()``).
"""
from .engine import (PackedActivations, available_paths, best_path, bgemm, conv2d, cpu_features, get_num_threads, get_path, linear,
                     pack_conv_weight, pack_nchw, pack_rows, set_num_threads, set_path, set_thread_backend, split_weights,
                     thread_backend,
                     weight_layout)
from .packed import NotPackable, PackedBinaryConv2d, PackedBinaryLinear, PackWarning, pack
from .quant import Int8Conv2d, Int8Linear, first_last_layers, quantize_int8
from .file import (PackedFileError, float32_bytes, is_packed_file, load, load_with_meta, read_info, save,
                   theoretical_bytes)

__all__ = [
    "NotPackable", "PackWarning", "PackedActivations", "PackedBinaryConv2d", "PackedBinaryLinear", "available_paths", "best_path",
    "bgemm", "conv2d", "cpu_features", "get_num_threads", "get_path", "linear", "pack", "pack_conv_weight",
    "pack_nchw", "pack_rows", "set_num_threads", "set_path", "set_thread_backend", "split_weights",
    "thread_backend", "weight_layout",
    "Int8Conv2d", "Int8Linear", "first_last_layers", "quantize_int8",
    "PackedFileError", "float32_bytes", "is_packed_file", "load", "load_with_meta", "read_info", "save",
    "theoretical_bytes",
]
