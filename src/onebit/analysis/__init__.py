"""Analysis: complexity (parameters, memory, BOPs/FLOPs/OPs/OPs+) and representational capability.

    from onebit.analysis import complexity, capability
    print(complexity(model).table())
    capability(model)["total"]
"""
from . import binaryvit_counts  # noqa: F401  (registers the ViT counters)
from .binaryvit_counts import PAPER_VIT_FLOPS
from .capability import CAPABILITY_RULES, capability, deit_capability, register_capability, resnet_capability
from .complexity import (COUNTERS, Counter, Report, complexity, per_element_flops, register_counter,
                         split_macs)

__all__ = ["PAPER_VIT_FLOPS", "CAPABILITY_RULES", "COUNTERS", "Counter", "Report", "capability", "complexity", "deit_capability",
           "per_element_flops", "register_capability", "register_counter", "resnet_capability", "split_macs"]
