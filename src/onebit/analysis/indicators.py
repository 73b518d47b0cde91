"""ReSTE's estimating error and gradient instability as functions of the power o (paper 001, Fig. 1-2).

    from onebit.analysis.indicators import indicator_curves, indicators_png
    curves = indicator_curves(model)              # a model: its latent binary weights
    curves = indicator_curves(torch.randn(10000) * 0.3)
    indicators_png(curves, "indicators.png", title="bireal_resnet20")

Larger o brings f_o(x) = sign(x)|x|^(1/o) closer to sign (the estimating error falls) but makes
its derivative explode near 0 (the gradient instability rises); the indicators themselves are
:func:`onebit.train.diagnostics.estimator_indicators`, plus the authors' fitting error
(:func:`onebit.train.diagnostics.fitting_error`).  These curves evaluate one set of latent weights
at several o; the appendix's Fig. 1 trains one model per o_end (and its gradient instability needs
a training step's gradients: the trainer logs it with ``train.indicators``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["DEFAULT_O", "indicator_curves", "indicators_png"]

DEFAULT_O = (1, 1.5, 2, 2.5, 3, 3.5, 4)


def indicator_curves(values, o_values: Sequence[float] = DEFAULT_O, t: float = 1.5, m: float = 0.1) -> dict:
    """Estimating error and gradient instability of ReSTE at each o in ``o_values``.

    ``values``: a tensor / array of (latent weight or activation) values, or a model, whose
    binary layers' latent weights are used.  ``t``: gradient threshold; ``m``: width of the
    flat region around 0 (the authors' 1.5 and 0.1).  Returns {"o": [...],
    "estimating_error": [...], "gradient_instability": [...], "fitting_error": [...], "n": number of
    values}; the fitting error sums ||f_o(w) - sign(w)||_2 over a model's binary layers (one norm
    over plain values).
    """
    from ..train.diagnostics import estimator_indicators, fit_norm, fitting_error, latent_weights
    model = values if isinstance(values, nn.Module) else None
    if model is not None:
        x = latent_weights(values)
        if x.numel() == 0:
            raise ValueError(f"{type(values).__name__} has no binary-weight layers to take latent weights from")
    else:
        x = torch.as_tensor(np.asarray(values, dtype=np.float64) if not isinstance(values, torch.Tensor) else values)
    x = x.detach().flatten().double().cpu()
    if x.numel() == 0:
        raise ValueError("no values to compute the indicators on")
    os_ = [float(o) for o in o_values]
    if not os_ or min(os_) <= 0:
        raise ValueError(f"o values must be > 0, got {list(o_values)}")
    rows = [estimator_indicators(x, o, t=t, m=m) for o in os_]
    fit = [fitting_error(model, o) if model is not None else fit_norm(x, o) for o in os_]
    return {"o": os_, "estimating_error": [r["estimating_error"] for r in rows],
            "gradient_instability": [r["gradient_instability"] for r in rows], "fitting_error": fit,
            "n": int(x.numel()), "t": t, "m": m}


def indicators_png(curves: dict, path, title: str = "", mark_o: float | None = None) -> Path:
    """Both indicators against o, side by side; ``mark_o`` draws a vertical line (e.g. the o a
    checkpoint was trained to)."""
    from ..analysis_plots import _pyplot
    plt = _pyplot()
    o = np.asarray(curves["o"], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for ax, key, label, colour in ((axes[0], "estimating_error", "estimating error", "C0"),
                                   (axes[1], "gradient_instability", "gradient instability", "C3")):
        ax.plot(o, curves[key], marker="o", color=colour)
        ax.set_xlabel("ReSTE power o")
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        ax.set_xticks(o)
        ax.grid(alpha=0.3)
        if mark_o is not None:
            ax.axvline(mark_o, color="gray", ls="--", lw=1)
            ax.text(mark_o, 0.98, f" o = {mark_o:g}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                    color="gray")
    n = curves.get("n")
    fig.suptitle((title + "  " if title else "") + (f"({n:,} values)" if n else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
    return Path(path)
