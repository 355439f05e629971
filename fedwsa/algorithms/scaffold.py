"""SCAFFOLD (Karimireddy et al. 2020, option II control variates; METHODS.md section 4), as
NIID-Bench implements it (``experiments.py``: ``train_net_scaffold``,
``local_train_net_scaffold``), which this module follows where the two differ:

- Client i, from y = theta_g, takes a momentum-SGD step (with weight decay) on its plain loss,
  THEN subtracts lr (c - c_i) from the weights (the paper adds c - c_i to the gradient of a
  plain SGD step; with momentum the two differ, and NIID-Bench's correction bypasses the
  momentum buffer).
- After its K_i local steps the client's new control variate is
  c_i+ = c_i - c + (theta_g - y_i) / (K_i lr), the paper's option II.
- The server averages the models with FedAvg's weights p_i (eta_g = 1) and moves
  c <- c + (1/N) sum_{i in S} (c_i+ - c_i), N = ``num-clients`` (all clients, not the sampled).
- c and every c_i start at zero (the paper). NIID-Bench starts both at the same randomly
  initialised network; with every client sampled in round 1 that offset cancels, and it would
  only bias partially sampled runs, so fedwsa keeps the paper's zeros.

What travels: the server sends each sampled client d_i = c - c_i (one per-client array per
parameter, all a client needs); the client's step count comes back with its weights, so the
server computes c_i+ itself from (theta_g, y_i, K_i): one model fewer per client on the wire,
and the same numbers. Clients that fail or return non-finite weights keep their c_i and do not
move c.

The c_i live in a ``ClientStateStore`` on disk (``scaffold-store``, default
``<run-dir>/client-state``): one model per client ever sampled (see that module for the
figures), only the sampled clients' rows in memory. c is part of the checkpoint; the store is
checkpointed incrementally (only the clients a round trained are written).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedwsa.algorithms.base import (
    ClientInputs,
    ClientTerm,
    ClientUpdates,
    ServerPart,
    Tensors,
    cloned_tensors,
)
from fedwsa.algorithms.client_state import ClientStateStore, versions_of
from fedwsa.keys import ConfigError, any_string, key

if TYPE_CHECKING:
    from fedwsa.config import Config

NAME = "scaffold"
STORE_KEY = "scaffold-store"
STORE_DIR = "client-state"
KEYS = (
    key(STORE_KEY, "", any_string(),
        "SCAFFOLD: directory of the clients' control variates, one file per client "
        "('' = <run-dir>/client-state)."),
)


class ScaffoldTerm(ClientTerm):
    """After each local SGD step: y <- y - lr (c - c_i) (NIID-Bench's correction)."""

    name = NAME

    def after_step(self, params: Mapping[str, Tensor], shared: Mapping[str, Tensor],
                   own: Mapping[str, Tensor], lr: float) -> None:
        names = list(params)
        torch._foreach_add_([params[n] for n in names], [own[n] for n in names], alpha=-lr)

    def idle_inputs(self, shared: Tensors, own: Tensors) -> tuple[Tensors, Tensors]:
        """c - c_i = 0: the step's correction is lr * 0."""
        return {}, {n: torch.zeros_like(v) for n, v in own.items()}


def store_path(config: Config) -> Path:
    """Where the control variates live: ``scaffold-store``, else ``<run-dir>/client-state``."""
    if config.scaffold_store:
        return Path(config.scaffold_store)
    if not config.run_dir:
        raise ConfigError(STORE_KEY, "", "a directory, or run-dir set (the client state of "
                          "SCAFFOLD lives on disk, by default in <run-dir>/client-state)")
    return Path(config.run_dir) / STORE_DIR


class ScaffoldServer(ServerPart):
    """Holds c, sends d_i = c - c_i, updates c_i and c from the replies."""

    name = NAME
    needs_client_weights = True  # c_i+ comes from each client's own weights

    def __init__(self, config: Config, params: Mapping[str, Tensor]) -> None:
        self.lr = config.lr
        self.num_clients = config.num_clients
        # c is server state on the CPU, float32 like the store (``params`` may be the model's
        # meta tensors: only their names and shapes are used).
        self.c: Tensors = {n: torch.zeros(p.shape, dtype=torch.float32, device="cpu")
                           for n, p in params.items()}
        self.config = config
        self.params = params
        self._store: ClientStateStore | None = None

    @property
    def store(self) -> ClientStateStore:
        if self._store is None:
            self._store = ClientStateStore(store_path(self.config), self.params, STORE_KEY)
        return self._store

    def describe(self) -> str:
        return (f"scaffold: control variates in {self.store.path}, c moved by 1/"
                f"{self.num_clients} of the sampled clients' changes")

    def client_inputs(self, server_round: int, global_params: Mapping[str, Tensor],
                      client_ids: Sequence[int]) -> ClientInputs:
        c_i = self.store.read(client_ids)
        return ClientInputs(per_client={n: self.c[n].unsqueeze(0) - c_i[n] for n in self.c})

    def after_merge(self, server_round: int, global_params: Mapping[str, Tensor],
                    new_global: Tensors, updates: ClientUpdates) -> Tensors:
        """c_i+ = c_i - c + (theta_g - y_i) / (K_i lr); c += sum_i (c_i+ - c_i) / N.

        A client that made no step (an empty partition) measured no drift: its c_i stays and
        it does not move c (NIID-Bench would divide by zero here)."""
        moved = [k for k, s in enumerate(updates.steps.tolist()) if s > 0]
        if not moved:
            return new_global
        ids = [updates.client_ids[k] for k in moved]
        # c and the c_i live on the CPU (server state, the store): the clients' weights and
        # step counts come there, only the rows of the clients that moved.
        rows = torch.tensor(moved, dtype=torch.long)
        c_i = self.store.read(ids)
        scale = 1.0 / (updates.steps.cpu()[rows].to(torch.float32) * self.lr)
        new_c_i: Tensors = {}
        for n, c in self.c.items():
            stacked = updates.params[n].detach()
            y = stacked[rows.to(stacked.device)].cpu().float()
            drift = global_params[n].detach().cpu().float().unsqueeze(0) - y
            new_c_i[n] = c_i[n] - c + drift * scale.reshape(-1, *([1] * c.dim()))
            self.c[n] = c + (new_c_i[n] - c_i[n]).sum(dim=0) / self.num_clients
        self.store.write(server_round, {cid: {n: v[k] for n, v in new_c_i.items()}
                                        for k, cid in enumerate(ids)})
        return new_global

    def preflight(self, state: Mapping[str, Any] | None) -> None:
        if not state:
            self.store.check_new()
        else:
            self.store.check_resumable(str(state["store"]["id"]), versions_of(state["store"]))

    def committed(self) -> None:
        self.store.commit()

    def state_dict(self) -> dict[str, Any]:
        return {"c": cloned_tensors(self.c), "store": self.store.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.c = cloned_tensors(state["c"])
            self.store.load_state_dict(state["store"])


def client_term(config: Config, params: Mapping[str, Tensor]) -> ScaffoldTerm:
    return ScaffoldTerm()


def server_part(config: Config, params: Mapping[str, Tensor]) -> ScaffoldServer:
    return ScaffoldServer(config, params)
