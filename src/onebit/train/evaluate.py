"""Evaluation: top-1 / top-5, per-class accuracy and the confusion matrix."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model: nn.Module, loader, class_names: list[str], label_map: list[int] | None = None) -> dict:
    """Metrics of ``model`` over ``loader``.

    ``label_map[i]`` is the model's output index for the data set's class i (class folders
    matched by name); rows of the confusion matrix are true classes, columns predictions,
    both in the model's class order.
    """
    model.eval()
    k = len(class_names)
    confusion = torch.zeros(k, k, dtype=torch.long)
    top5 = loss_sum = n = 0
    index = torch.tensor(label_map) if label_map is not None else None
    device = next(model.parameters()).device
    for x, y in loader:
        if index is not None:
            y = index[y]
        logits = model(x.to(device)).float().cpu()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        confusion += torch.bincount(y * k + pred, minlength=k * k).view(k, k)
        kk = min(5, logits.shape[1])
        top5 += (logits.topk(kk, 1).indices == y[:, None]).any(1).sum().item()
        n += len(y)
    if n == 0:
        raise ValueError("evaluation data set is empty")
    correct = confusion.diag()
    support = confusion.sum(1)
    per_class = {name: (round(100.0 * c.item() / s.item(), 2) if s.item() else None)
                 for name, c, s in zip(class_names, correct, support)}
    return {
        "top1": 100.0 * correct.sum().item() / n,
        "top5": 100.0 * top5 / n,
        "loss": loss_sum / n,
        "n": n,
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion": confusion.tolist(),
    }


def confusion_text(result: dict) -> str:
    """The confusion matrix as an aligned text table (rows: true class, columns: predicted)."""
    names = [n[:6] for n in result["class_names"]]
    w = max(6, max(len(n) for n in names))
    lines = [" " * (w + 1) + " ".join(f"{n:>{w}}" for n in names)]
    for name, row in zip(names, result["confusion"]):
        lines.append(f"{name:>{w}} " + " ".join(f"{v:>{w}d}" for v in row))
    return "\n".join(lines)
