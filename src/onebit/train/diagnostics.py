"""Training diagnostics of binary layers: weight flip ratio, latent-weight histograms, and
ReSTE's estimator indicators (paper 001, appendix Fig. 1-2).

- flip ratio (larq's metric): the fraction of binary weights whose sign changed between two
  snapshots (here: the start and the end of an epoch);
- latent-weight histogram: counts of all latent binary weights over fixed bins;
- estimating error of ReSTE at power o: mean over values x of |sign(x) - f_o(x)|, with
  f_o(x) = sign(x) |x|^(1/o) the function whose derivative ReSTE uses (x clipped to the
  gradient threshold t, beyond which the estimator is flat);
- gradient instability at o: the variance of the estimator's surrogate gradient over the
  same values (large when o is large: the gradient explodes near 0).
Both indicators are computed on the latent weights of the binary layers.  The appendix gives
them only in words; the authors' code (DravenALG/ReSTE, utils/tools.py, run with --cal_ind)
defines them differently, and those are here too, as the figures to compare with Fig. 1-2:
- fitting error (their estimating error) at o: the sum over binary-weight layers of the L2 norm
  ||f_o(w) - sign(w)||, unclipped, sign(0) = 0; their training loop takes it at o_end;
- stability variance (their gradient instability): the sum over binary-weight layers of the
  variance of |dL/dw| of the latent weights after a training step's backward.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..binarize.sign import rectified_power, reste_grad, sign
from ..layers.binary import BinaryLayer


def binary_weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer) and m.binary_weights]


@torch.no_grad()
def sign_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """The sign bits (w >= 0) of every binary layer's latent weight."""
    return {n: (m.weight >= 0).clone() for n, m in binary_weight_layers(model)}


def flip_ratio(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    flipped = total = 0
    for n, b in before.items():
        if n in after:
            flipped += (b != after[n]).sum().item()
            total += b.numel()
    return flipped / total if total else 0.0


@torch.no_grad()
def latent_weights(model: nn.Module) -> torch.Tensor:
    layers = binary_weight_layers(model)
    if not layers:
        return torch.zeros(0)
    return torch.cat([m.weight.detach().flatten().float().cpu() for _, m in layers])


@torch.no_grad()
def latent_histogram(model: nn.Module, bins: int = 60, lo: float = -1.5, hi: float = 1.5) -> dict:
    """Histogram of all latent binary weights; values outside [lo, hi] fall in the end bins."""
    w = latent_weights(model).clamp(lo, hi)
    counts = torch.histc(w, bins=bins, min=lo, max=hi) if w.numel() else torch.zeros(bins)
    return {"lo": lo, "hi": hi, "counts": [int(c) for c in counts.tolist()]}


@torch.no_grad()
def estimator_indicators(x: torch.Tensor, o: float, t: float = 1.5, m: float = 0.1) -> dict:
    """Estimating error and gradient instability of ReSTE with power ``o`` on values ``x``."""
    x = x.flatten().double()
    xc = x.clamp(-t, t)
    error = (sign(xc) - rectified_power(xc, o)).abs().mean().item()
    g = reste_grad(o, t, m)(x, torch.ones_like(x))
    return {"o": o, "estimating_error": error, "gradient_instability": g.var().item()}


@torch.no_grad()
def fit_norm(w: torch.Tensor, o: float) -> float:
    """||f_o(w) - sign(w)||_2 over the values of ``w`` (unclipped, sign(0) = 0): one layer's term."""
    w = w.detach().flatten().double()
    return torch.linalg.vector_norm(rectified_power(w, o) - torch.sign(w)).item()


def fitting_error(model: nn.Module, o: float) -> float:
    """The authors' estimating error (see module doc): sum over layers of ||f_o(w) - sign(w)||_2."""
    return sum(fit_norm(m.weight, o) for _, m in binary_weight_layers(model))


@torch.no_grad()
def stability_variance(model: nn.Module) -> float | None:
    """The authors' gradient instability (see module doc): sum over layers of var(|dL/dw|), from the
    gradients the last backward left on the latent weights (clipped, with train.grad_clip; the
    authors' ReSTE runs do not clip); None if a layer has no gradient."""
    total = 0.0
    for _, m in binary_weight_layers(model):
        if m.weight.grad is None:
            return None
        total += m.weight.grad.detach().flatten().double().abs().var().item()
    return total


def reste_o_end(model: nn.Module) -> float | None:
    """o_end of the model's first ReSTE weight binarizer, else of its first ReSTE input binarizer
    (the authors use one o_end for both); None without ReSTE."""
    from ..binarize.estimators import ReSTE
    weights = (m.weight_binarizer for _, m in binary_weight_layers(model))
    for candidates in (weights, model.modules()):
        b = next((b for b in candidates if isinstance(b, ReSTE)), None)
        if b is not None:
            return b.schedule.end
    return None
