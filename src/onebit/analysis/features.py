"""Penultimate-layer features and their t-SNE map (paper 002, Fig. 9).

    from onebit.analysis.features import penultimate_features, tsne_png
    feats, labels = penultimate_features(model, loader, max_images=2000)
    tsne_png(feats, labels, meta["class_names"], "tsne.png")

Features are the classifier's input: ``model.forward_features(x)`` when the model has it
(onebit's ResNets: after global pooling and the head BatchNorm), else the input of the
model's last ``nn.Linear`` caught with a forward hook.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["penultimate_features", "tsne_embedding", "tsne_png"]


@torch.no_grad()
def penultimate_features(model: nn.Module, loader, max_images: int | None = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, labels (N,) int64) of the first ``max_images`` images of ``loader``.

    ``loader`` yields (images, labels) batches prepared as the model expects.  The model is
    run in eval mode (its mode is restored afterwards).
    """
    linear = None
    if not callable(getattr(model, "forward_features", None)):
        linear = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
        if linear is None:
            raise ValueError(f"{type(model).__name__} has neither forward_features() nor an nn.Linear classifier "
                             f"whose input could be read")
    caught: list[torch.Tensor] = []
    hook = linear.register_forward_hook(lambda m, inp, out: caught.append(inp[0])) if linear is not None else None
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    feats, labels, n = [], [], 0
    try:
        for x, y in loader:
            if max_images is not None and n >= max_images:
                break
            x = x.to(device)
            if linear is None:
                f = model.forward_features(x)
            else:
                caught.clear()
                model(x)
                if not caught:
                    raise ValueError(f"the last nn.Linear of {type(model).__name__} was not called in forward()")
                f = caught[-1]
            f = f.float().flatten(1).cpu()
            feats.append(f)
            labels.append(torch.as_tensor(y).cpu())
            n += len(f)
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no images")
    f, y = torch.cat(feats), torch.cat(labels)
    if max_images is not None:
        f, y = f[:max_images], y[:max_images]
    return f.numpy(), y.numpy().astype(np.int64)


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30) -> tuple[np.ndarray, float]:
    """(2-D t-SNE embedding (N, 2), the perplexity used) of ``features`` (N, D).

    Features of more than 50 dimensions are first reduced to 50 with PCA (the usual t-SNE
    practice).  The perplexity must stay below N; a larger one is lowered to (N - 1) / 3.
    """
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError:
        raise ValueError("t-SNE needs scikit-learn: pip install scikit-learn") from None
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    n = len(x)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    if perplexity >= n:
        perplexity = max(1.0, (n - 1) / 3)
    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
               random_state=seed).fit_transform(x)
    return emb, float(perplexity)


def tsne_png(features: np.ndarray, labels, class_names, path, seed: int = 0, perplexity: float = 30,
             title: str = "") -> np.ndarray:
    """t-SNE map of ``features`` coloured by class with a legend; writes ``path`` and returns the
    2-D embedding."""
    from ..analysis_plots import _pyplot
    plt = _pyplot()
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    emb, used = tsne_embedding(features, seed, perplexity)
    names = list(class_names)
    k = max(len(names), int(labels.max()) + 1 if len(labels) else 0)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20" if k <= 20 else "turbo")
    colours = [cmap(i) if k <= 20 else cmap(i / max(1, k - 1)) for i in range(k)]
    legend = k <= 20
    fig, ax = plt.subplots(figsize=(7.6 if legend else 6.2, 6.0))
    size = 14 if len(labels) <= 500 else 6
    for c in range(k):
        sel = labels == c
        if sel.any():
            ax.scatter(emb[sel, 0], emb[sel, 1], s=size, color=colours[c], alpha=0.8, linewidths=0,
                       label=names[c] if c < len(names) else str(c))
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, markerscale=2.0 if size < 10 else 1.4,
                  frameon=False, title="class")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of penultimate features ({len(labels)} images, perplexity {used:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=120)
    plt.close(fig)
    return emb
