"""Plots that the CLI writes (matplotlib, imported only when a plot is asked for)."""
from __future__ import annotations


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'onebit[analysis]'") from None
    return plt


def confusion_png(result: dict, path) -> None:
    """The confusion matrix of an evaluation result (rows: true class; columns: predicted), row-normalised."""
    import numpy as np
    plt = _pyplot()
    cm = np.array(result["confusion"], dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = result["class_names"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(names), 0.8 + 0.6 * len(names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {result['top1']:.2f}% on {result['n']} images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
