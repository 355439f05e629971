"""The server strategy: one composed Flower ``Strategy`` for every preset."""

from __future__ import annotations

from fedwsa.config import Config
from fedwsa.strategies.cohort import (
    ClientUpdates,
    CohortStrategy,
    model_parameters,
    sample_clients,
)


def build_strategy(config: Config) -> CohortStrategy:
    """The strategy ``config.strategy`` (with ``server-opt``) composes."""
    return CohortStrategy(config)


__all__ = ["ClientUpdates", "CohortStrategy", "build_strategy", "model_parameters",
           "sample_clients"]
