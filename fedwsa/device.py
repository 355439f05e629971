"""Where heavy work runs: the GPU when there is one, else the CPU."""

from __future__ import annotations

import torch

from fedwsa.keys import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "auto or cpu (no CUDA device is visible here)")
    return torch.device(name)
