"""Complexity counters of BinaryViT's own modules (reference.md section 6).

- Attention products Q K^T and P V: N x M x C multiply-adds each (N query tokens, M key
  tokens: under Bi-SR-MHA the grid's tokens pooled by R^2, plus the unpooled cls token), BOPs
  when binary (+-1 operands; P in {0, alpha_P}), FLOPs in the full-precision twin.  Counting
  them reproduces Table 4's BOPs (4.51e9 for the baseline DeiT-S: 4.18e9 without them).
- LayerScale and the pooling branches: 0 by default.  :data:`PAPER_VIT_FLOPS` is the
  convention that reproduces Table 4's BinaryViT FLOPs (0.19e8) and OPs (0.79e8): one FLOP
  per output element for each of the four pooling branches and for each LayerScale multiply
  on the two main branches.  Pass it as ``complexity(model, counters=PAPER_VIT_FLOPS)``.
"""
from __future__ import annotations

from ..binarize.react import RSign
from ..binarize.scaling import LearnedStep
from ..layers.attention import BinaryAttention
from ..models.binaryvit import BinaryViT, LayerScale, PatchMerge, PoolBranches
from .complexity import count_zero, per_element_flops, register_counter


@register_counter(BinaryAttention, container=True)
def count_attention(m: BinaryAttention, inputs, out) -> dict:
    h, grid = inputs[0], inputs[1]
    b, n, c = h.shape
    extra = n - grid[0] * grid[1]  # the cls token, never pooled (split_extra)
    m_tokens = n if m.reduce is None else (grid[0] // m.sr_ratio) * (grid[1] // m.sr_ratio) + extra
    macs = 2 * b * n * m_tokens * c  # Q K^T and P V over all heads
    return {"bops": macs} if isinstance(m.sign_q, RSign) else {"flops": macs}


register_counter(LayerScale, LearnedStep)(count_zero)
register_counter(BinaryViT, PatchMerge, container=True)(count_zero)  # their own cls token and position embeddings


@register_counter(PoolBranches)
def count_pool_branches(m, inputs, out) -> dict:  # owns its LayerScales
    return {}


def paper_pool_branch_flops(m, inputs, out) -> dict:
    return {"flops": len(m.pools) * out.numel()}


PAPER_VIT_FLOPS = {LayerScale: per_element_flops, PoolBranches: paper_pool_branch_flops}
