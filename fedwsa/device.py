"""Where heavy work runs: the GPU when there is one, else the CPU."""

from __future__ import annotations

import re

import torch

from fedwsa.keys import ConfigError, Spec

DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
"""The ``device`` values: ``auto``, ``cpu``, ``cuda`` (the current GPU) or ``cuda:N``."""


def device_spec() -> Spec:
    return "auto, cpu, cuda or cuda:N", lambda v: DEVICE.fullmatch(v) is not None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` or ``cuda:N`` without that GPU is a
    config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", name, "auto or cpu (no CUDA device is visible here)")
        count = torch.cuda.device_count()
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError("device", name, f"auto, cpu, cuda or cuda:0 .. cuda:{count - 1} "
                              f"({count} CUDA device(s) visible here)")
    return torch.device(name)
