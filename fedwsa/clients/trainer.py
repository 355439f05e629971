"""What a node's trainer is given and gives back: the cohort protocol's client side.

A trainer takes one ``CohortTask`` (the global weights and the ids of the clients this node
trains this round) and returns one ``CohortResult`` with the clients' weights stacked along a
leading client axis. The sequential and the batched trainer implement the same ``Trainer``
protocol, and must give the same per-client results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from fedwsa.config import Config
from fedwsa.protocol import TrainReply


@dataclass(frozen=True)
class LocalSettings:
    """Local SGD hyper-parameters, shared by every client of a run."""

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    augment: bool
    seed: int

    @classmethod
    def from_config(cls, config: Config) -> LocalSettings:
        return cls(config.local_epochs, config.batch_size, config.lr, config.momentum,
                   config.weight_decay, config.augment, config.seed)


@dataclass(frozen=True)
class WsaTarget:
    """The target scope of the WSA term (METHODS.md 1.1): one (mu, sigma) per named layer."""

    beta: float
    names: tuple[str, ...]
    mu: torch.Tensor
    sigma: torch.Tensor


@dataclass
class CohortTask:
    """One round's work for one node."""

    server_round: int
    client_ids: list[int]
    global_params: dict[str, torch.Tensor]
    wsa: WsaTarget | None = None


# A cohort's result is exactly what the node's reply carries (the cohort protocol's reply).
CohortResult = TrainReply


class Trainer(Protocol):
    """Trains a cohort of clients from the global model on their partitions."""

    def train(self, task: CohortTask) -> CohortResult: ...


def epoch_generator(seed: int, server_round: int, client_id: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, round, client, epoch).

    Both trainers draw a client's shuffling and augmentation from it, so the order in which a
    node trains its clients, and how it batches them, never changes a client's result.
    """
    state = np.random.SeedSequence([seed, server_round, client_id, epoch]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def num_batches(num_examples: int, batch_size: int) -> int:
    """Mini-batches per epoch; the last one may be short (it is not dropped)."""
    return -(-num_examples // batch_size)
