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


def require_matplotlib() -> None:
    """Raise the 'plots need matplotlib' ValueError now, before any long work."""
    _pyplot()


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


def capability_png(result: dict, path, title: str = "") -> None:
    """Representational capability after each step (log scale), one point per counted layer."""
    plt = _pyplot()
    rows = result["per_layer"]
    values = [r["value_after"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(rows)), 3.8))
    colors = ["tab:red" if r.get("op") == "multiply" else "tab:blue" for r in rows]
    ax.bar(range(len(rows)), values, color=colors)
    ax.set_yscale("log")
    ax.set_xlabel("layer (blue: a binary layer adds D_in K^2; red: pooling multiplies)")
    ax.set_ylabel("capability (distinct values)")
    step = max(1, len(rows) // 12)
    ax.set_xticks(range(0, len(rows), step), [rows[i]["name"] for i in range(0, len(rows), step)],
                  rotation=60, ha="right", fontsize=6)
    ax.set_title(f"{title}  total {result['total']:,}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
