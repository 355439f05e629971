"""What a node's trainer is given and gives back: the cohort protocol's client side.

A trainer takes one ``CohortTask`` (the global weights, the ids of the clients this node
trains this round and the algorithms' inputs for them) and returns one ``CohortResult`` with
the clients' weights, local step counts and the algorithms' per-client outputs, stacked along a
leading client axis. The sequential and the batched trainer implement the same ``Trainer``
protocol, run the same ``ClientTerm`` hooks, and must give the same per-client results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from fedwsa.algorithms.base import ClientInputs, ClientTerm, own_arrays, take_rows
from fedwsa.config import Config
from fedwsa.protocol import TrainReply


@dataclass(frozen=True)
class LocalSettings:
    """Local SGD hyper-parameters, shared by every client of a run (epochs may be per client)."""

    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    augment: bool
    seed: int
    # Each client's own local epochs, indexed by client id, when the clients of several runs
    # train together (``fedwsa.clients.fused``); None: ``local_epochs`` for every client.
    client_epochs: tuple[int, ...] | None = None

    def epochs_of(self, client_id: int) -> int:
        """The local epochs ``client_id`` trains."""
        return self.local_epochs if self.client_epochs is None else self.client_epochs[client_id]

    @classmethod
    def from_config(cls, config: Config) -> LocalSettings:
        return cls(config.local_epochs, config.batch_size, config.lr, config.momentum,
                   config.weight_decay, config.augment, config.seed)


@dataclass
class CohortTask:
    """One round's work for one node."""

    server_round: int
    client_ids: list[int]
    global_params: dict[str, torch.Tensor]
    inputs: ClientInputs = field(default_factory=ClientInputs)
    # When clients of several runs train together (``fedwsa.clients.fused``): each run's
    # global model and shared inputs stacked along a leading run axis, and each client's run
    # (its row there) in client_ids order; the terms then see both per client. Stacked per run,
    # not per client, so a run's model is held once however many of its clients train (a grid
    # of ResNet-18 runs, 45 MB a model, would otherwise stack one copy per client on the host);
    # the trainer moves them to its device once and gathers a chunk's rows there. None: every
    # client starts from ``global_params`` and the shared inputs are ``inputs.shared``. Only
    # the batched trainer takes them.
    run_params: dict[str, torch.Tensor] | None = None
    run_shared: dict[str, torch.Tensor] | None = None
    run_of: tuple[int, ...] | None = None
    # Each run's local SGD ``-lr``, ``momentum`` and ``weight-decay`` ([runs] each, a client's
    # row by ``run_of``), when fused runs differ in them; None: the trainer's ``LocalSettings``
    # for every client.
    run_hyper: dict[str, torch.Tensor] | None = None
    # Each client's row of each per-client input (``inputs.per_client`` is then a table whose
    # rows clients may share: the idle inputs of a term its run lacks, e.g. a model-sized zero
    # c - c_i, are one row for all such clients instead of a copy each); None: row i is client
    # i's.
    own_of: dict[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        if (self.run_params is None) != (self.run_of is None):
            raise ValueError("run_params and run_of come together (clients of several runs)")
        if self.run_hyper is not None and self.run_of is None:
            raise ValueError("run_hyper needs run_of (each client's run)")
        if self.own_of is not None:
            if set(self.own_of) != set(self.inputs.per_client):
                raise ValueError(f"own_of names {sorted(self.own_of)}, the per-client inputs "
                                 f"are {sorted(self.inputs.per_client)}")
            wrong = [n for n, rows in self.own_of.items() if len(rows) != len(self.client_ids)]
            if wrong:
                raise ValueError(f"own_of of {wrong} has no row for some of the "
                                 f"{len(self.client_ids)} clients")
            outside = [n for n, rows in self.own_of.items()
                       if rows and not 0 <= min(rows) <= max(rows) < len(self.inputs.per_client[n])]
            if outside:
                raise ValueError(f"own_of of {outside} names rows its table does not have")
        if self.run_of is not None and len(self.run_of) != len(self.client_ids):
            raise ValueError(f"run_of has {len(self.run_of)} entries for "
                             f"{len(self.client_ids)} clients")

    def subset(self, client_ids: Sequence[int]) -> CohortTask:
        """The same task for some of its clients (their rows of the per-client inputs; with
        ``own_of``, the same table and their rows of it)."""
        pos = {c: i for i, c in enumerate(self.client_ids)}
        rows = [pos[c] for c in client_ids]
        run_of = None if self.run_of is None else tuple(self.run_of[i] for i in rows)
        if self.own_of is None:
            return replace(self, client_ids=list(client_ids), inputs=self.inputs.rows(rows),
                           run_of=run_of)
        return replace(self, client_ids=list(client_ids), run_of=run_of,
                       own_of={n: tuple(of[i] for i in rows) for n, of in self.own_of.items()})

    def own_rows(self, positions: Sequence[int], device: torch.device | None = None
                 ) -> dict[str, torch.Tensor]:
        """The per-client inputs of the clients at ``positions``, stacked in that order (moved
        to ``device`` when given: the trainer sends only a chunk's rows, so a model-sized
        per-client input costs a chunk's worth of device memory, not the cohort's)."""
        if self.own_of is None:
            return take_rows(self.inputs.per_client, positions, device)
        return {n: take_rows({n: v}, [self.own_of[n][p] for p in positions], device)[n]
                for n, v in self.inputs.per_client.items()}


def term_inputs(terms: Sequence[ClientTerm], arrays: dict[str, torch.Tensor],
                device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """Each term's own arrays (prefix stripped) on ``device``, keyed by term name."""
    return {t.name: {k: v.to(device) for k, v in own_arrays(t.name, arrays).items()}
            for t in terms}


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
