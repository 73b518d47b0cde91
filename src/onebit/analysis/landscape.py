"""Loss landscapes with filter-normalised random directions (Li et al., NeurIPS 2018).

As in papers 002 (Fig. 6) and 004 (Fig. 2/6): two random Gaussian directions d1, d2 over
the model's weights, each filter (output channel of a conv / row of a linear) rescaled to
the norm of the matching filter of the trained weights; biases and BN parameters are not
moved.  The loss L(theta + a d1 + b d2) is evaluated on a grid of (a, b) in [-span, span]^2
over a fixed set of batches.  For binary layers the *latent* weights move and the forward
still binarizes them, so the surface shows what the estimator's optimiser sees.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _directions(model: nn.Module, generator: torch.Generator) -> list:
    """One filter-normalised random direction: a tensor per parameter (zeros for 1-D ones)."""
    out = []
    for p in model.parameters():
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        dn = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        pn = p.detach().flatten(1).norm(dim=1)
        out.append(d * (pn / dn).view(-1, *[1] * (p.dim() - 1)))
    return out


@torch.no_grad()
def loss_landscape(model: nn.Module, batches: list, resolution: int = 21, span: float = 1.0, seed: int = 0,
                   progress: bool = True) -> dict:
    """Loss and accuracy on a resolution x resolution grid; ``batches`` is a list of (x, y)."""
    if resolution < 2:
        raise ValueError(f"landscape resolution must be >= 2, got {resolution}")
    if span <= 0:
        raise ValueError(f"landscape span must be > 0, got {span}")
    if not batches:
        raise ValueError("landscape needs at least one batch of data")
    model.eval()
    g = torch.Generator().manual_seed(seed)
    d1, d2 = _directions(model, g), _directions(model, g)
    base = [p.detach().clone() for p in model.parameters()]
    coords = np.linspace(-span, span, resolution)
    loss = np.zeros((resolution, resolution))
    acc = np.zeros((resolution, resolution))
    from tqdm import tqdm
    bar = tqdm(total=resolution * resolution, desc="landscape", disable=not progress or None, leave=False)
    try:
        for i, a in enumerate(coords):
            for j, b in enumerate(coords):
                for p, p0, u, v in zip(model.parameters(), base, d1, d2):
                    p.copy_(p0 + a * u + b * v)
                tot = correct = n = 0
                for x, y in batches:
                    logits = model(x)
                    tot += F.cross_entropy(logits, y, reduction="sum").item()
                    correct += (logits.argmax(1) == y).sum().item()
                    n += len(y)
                loss[i, j], acc[i, j] = tot / n, 100.0 * correct / n
                bar.update()
    finally:
        for p, p0 in zip(model.parameters(), base):
            p.copy_(p0)
        bar.close()
    return {"alpha": coords.tolist(), "beta": coords.tolist(), "loss": loss.tolist(), "accuracy": acc.tolist(),
            "span": span, "resolution": resolution, "seed": seed, "images": sum(len(y) for _, y in batches)}


def save_landscape(result: dict, out_dir, title: str = "") -> list[Path]:
    """Write grid.json, contour.png and surface.png into ``out_dir``; returns the paths."""
    from ..analysis_plots import _pyplot
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(result))
    a, b = np.meshgrid(result["alpha"], result["beta"], indexing="ij")
    z = np.array(result["loss"])
    fig, ax = plt.subplots(figsize=(5, 4.4))
    cs = ax.contour(a, b, z, levels=20, cmap="viridis")
    ax.clabel(cs, inline=True, fontsize=6, fmt="%.2f")
    ax.plot([0], [0], "r*", ms=8)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(f"loss contours {title}".strip())
    fig.tight_layout()
    fig.savefig(out / "contour.png", dpi=120)
    plt.close(fig)
    fig = plt.figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_zlabel("loss")
    ax.set_title(f"loss surface {title}".strip())
    fig.tight_layout()
    fig.savefig(out / "surface.png", dpi=120)
    plt.close(fig)
    return [out / "grid.json", out / "contour.png", out / "surface.png"]
