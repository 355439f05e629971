"""fedwsa: federated learning on non-IID data (WSA, CART, batched cohorts) on Flower.

Notebook helpers load on first use, so ``import fedwsa`` stays light (no torch, no Flower):
``fedwsa.plot(dir)``, ``fedwsa.summarize(dir)``, ``fedwsa.partition_heatmap(**keys)``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "plot": "fedwsa.experiments.notebook",
    "summarize": "fedwsa.experiments.notebook",
    "partition_heatmap": "fedwsa.experiments.notebook",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedwsa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["partition_heatmap", "plot", "summarize"]
