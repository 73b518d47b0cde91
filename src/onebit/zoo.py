"""onebit's zoo: trained checkpoints shipped with the package (filled by the training pipeline)."""
from __future__ import annotations


def available() -> list[str]:
    """Names of models with zoo weights (none yet)."""
    return []


def load(name: str, **kwargs):
    raise ValueError(f"no zoo weights named {name!r}; available: {', '.join(available()) or 'none yet'}")
