"""BinaryViT's two attention products on the XNOR-popcount engine.

Both products of :class:`onebit.layers.attention.BinaryAttention` have binary operands:

- A = RSign(Q) RSign(K)^T: rows of +-1 over D_h, i.e. ``engine.bgemm`` (D_h - 2 popcount(q xor k)),
  exact integers, so softmax and the alpha_P quantizer see the very tensor PyTorch computes;
- P V with P in {0, alpha_P} and V in {+-1}: with m_ij = [P_ij > 0] packed over the keys j and
  b_jd = [V_jd = +1] packed per column d, ``bgemm`` gives acc_id = M - 2 popcount(m_i xor b_d), and
  sum_j m_ij V_jd = popcount(b_d) - popcount(m_i xor b_d) = (acc_id + colsum_d) / 2 with
  colsum_d = sum_j V_jd.  So P V = alpha_P (acc + colsum) / 2, one rounding, as the training layer
  computes it (alpha_P ((P / alpha_P) V)): the same bits.

:func:`swap_attention` gives every eligible BinaryAttention of a packed model this forward (a class
swap: same modules, parameters and state_dict); the rest of the block (BiFC layers, BatchNorm,
RPReLU, residual sums) is unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..binarize.react import RSign
from ..layers.attention import BinaryAttention
from . import engine


def _bits(x: torch.Tensor) -> "engine.np.ndarray":
    """Sign bits (x >= 0) of the rows of a 2-D float tensor."""
    return engine.pack_rows(x.contiguous())


class PackedBinaryAttention(BinaryAttention):
    """BinaryAttention whose Q K^T and P V run on the engine (eval, float32 CPU); otherwise as before."""

    def attend(self, qb: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (qb.requires_grad or kb.requires_grad or vb.requires_grad
                                                  or self.prob.step.requires_grad)
        if needs_grad or qb.dtype is not torch.float32 or qb.device.type != "cpu":
            return super().attend(qb, kb, vb)
        b, h, n, d = qb.shape
        m = kb.shape[2]
        q = _bits(qb.reshape(b * h * n, d))
        k = _bits(kb.reshape(b * h * m, d))
        v = _bits(vb.transpose(-2, -1).reshape(b * h * d, m))
        scores = torch.empty((b * h, n, m), dtype=torch.float32)
        for i in range(b * h):
            scores[i] = torch.from_numpy(engine.bgemm(q[i * n:(i + 1) * n], k[i * m:(i + 1) * m], d))
        p = self.probs(scores.view(b, h, n, m))
        mask = _bits((p > 0).to(torch.float32).reshape(b * h * n, m) - 0.5)
        colsum = vb.sum(dim=-2).reshape(b * h, 1, d)  # exact: integers up to M
        acc = torch.empty((b * h, n, d), dtype=torch.float32)
        for i in range(b * h):
            acc[i] = torch.from_numpy(engine.bgemm(mask[i * n:(i + 1) * n], v[i * d:(i + 1) * d], m))
        return (self.prob.effective_step() * ((acc + colsum) * 0.5)).view(b, h, n, d)


def packable(att: nn.Module) -> bool:
    """True for a BinaryAttention in eval mode whose Q, K, V signs are RSign and whose P is
    BinaryViT's {0, alpha_P} quantizer (the full-precision twin keeps PyTorch's products)."""
    return (type(att) is BinaryAttention and not att.training
            and all(type(s) is RSign for s in (att.sign_q, att.sign_k, att.sign_v))
            and att.binary_probs)


def swap_attention(model: nn.Module) -> int:
    """Class-swap every packable BinaryAttention of ``model`` to PackedBinaryAttention; returns the count."""
    n = 0
    for mod in model.modules():
        if packable(mod):
            mod.__class__ = PackedBinaryAttention
            n += 1
    return n
