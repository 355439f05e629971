"""Config keys as data: a key's default, accepted values, check and help text.

Its own module, below every layer that declares keys (``fedwsa.config`` for the run's keys,
each ``fedwsa.algorithms`` module for its own), so that an algorithm's keys live with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AUTO = "auto"

HARMLESS_KEYS: frozenset[str] = frozenset(
    {"run-dir", "resume", "device", "data-root", "max-batched-clients", "checkpoint-every",
     "scaffold-store", "tensorboard", "node-aggregate", "conv-impl"})
"""Keys that change neither what a run trains nor what it records (bookkeeping, and where or
how fast it runs): ``compare`` lets a cell's directory differ from the grid in these, and
summaries never split groups by them. Here, not in ``fedwsa.config``, so that the modules that
only read results need not import torch."""


class ConfigError(ValueError):
    """A bad configuration value: names the key, the value and what is accepted."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"config key '{key}' = {value!r} is invalid: expected {accepted}")


@dataclass(frozen=True)
class Key:
    """One config key: its default, accepted values (as text) and a check.

    ``auto``: the key also takes ``"auto"`` (its default then), which the Config holds as None
    and the algorithm that reads the key resolves (e.g. Flower's default for the preset)."""

    name: str
    default: Any
    help: str
    accepted: str
    check: Callable[[Any], bool]
    auto: bool = False


Spec = tuple[str, Callable[[Any], bool]]


def choice(*options: str) -> Spec:
    return ", ".join(options), lambda v: v in options


def integer(lo: int, hi: float = math.inf) -> Spec:
    text = f"an integer >= {lo}" if hi == math.inf else f"an integer in [{lo}, {hi}]"
    return text, lambda v: lo <= v <= hi


def number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False
           ) -> Spec:
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    # Only finite numbers pass (``check``): an open top end reads as a bound, not as "inf".
    text = (f"a finite number {'>' if lo_open else '>='} {lo:g}" if hi == math.inf
            else f"a number in {left}{lo:g}, {hi:g}{right}")

    def check(v: float) -> bool:
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return math.isfinite(v) and above and below

    return text, check


ROUND_SCHEDULE = re.compile(r"none|last|every-([1-9][0-9]*)")
"""``none``, ``last`` or ``every-N`` (N in group 1): which rounds something is kept for."""


def round_schedule() -> Spec:
    return "none, last or every-N (N >= 1)", lambda v: ROUND_SCHEDULE.fullmatch(v) is not None


def any_string() -> Spec:
    return "a string", lambda v: True


def boolean() -> Spec:
    return "true or false", lambda v: True


def key(name: str, default: Any, spec: Spec, help: str) -> Key:
    accepted, check = spec
    return Key(name, default, help, accepted, check)


def auto_number(name: str, spec: Spec, help: str) -> Key:
    """A float key whose default ``"auto"`` leaves the value to the algorithm that reads it."""
    accepted, check = spec
    return Key(name, AUTO, help, f"'auto' or {accepted}", check, auto=True)
