"""Server strategies by name."""

from __future__ import annotations

from fedwsa.config import Config
from fedwsa.strategies.cohort import ClientUpdates, CohortStrategy, sample_clients
from fedwsa.strategies.fedavg import FedAvg

_STRATEGIES: dict[str, type[CohortStrategy]] = {"fedavg": FedAvg}


def build_strategy(config: Config) -> CohortStrategy:
    """The strategy named by ``config.strategy``."""
    if config.strategy not in _STRATEGIES:
        raise ValueError(f"strategy {config.strategy!r} is not available yet: expected one of "
                         f"{', '.join(_STRATEGIES)}")
    return _STRATEGIES[config.strategy](config)


__all__ = ["ClientUpdates", "CohortStrategy", "FedAvg", "build_strategy", "sample_clients"]
