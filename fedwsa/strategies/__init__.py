"""Server strategies by name."""

from __future__ import annotations

from importlib import import_module

from fedwsa.config import STRATEGIES, Config
from fedwsa.strategies.cohort import ClientUpdates, CohortStrategy, sample_clients
from fedwsa.strategies.fedavg import FedAvg

# Imported on demand so that a strategy's heavier dependencies load only when it is used.
_REGISTRY: dict[str, str] = {
    "fedavg": "fedwsa.strategies.fedavg:FedAvg",
    "fedwsa": "fedwsa.strategies.wsa:FedWSA",
    "cart": "fedwsa.strategies.cart:Cart",
    "fedwsa-cart": "fedwsa.strategies.cart:FedWSACart",
}
assert set(_REGISTRY) == set(STRATEGIES)


def build_strategy(config: Config) -> CohortStrategy:
    """The strategy named by ``config.strategy``."""
    module, name = _REGISTRY[config.strategy].split(":")
    return getattr(import_module(module), name)(config)


__all__ = ["ClientUpdates", "CohortStrategy", "FedAvg", "build_strategy", "sample_clients"]
