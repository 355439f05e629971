"""FedProx (Li et al. 2020; METHODS.md section 4): a proximal term in each client's loss.

    loss_i = cross_entropy + mu/2 * ||theta - theta_g||^2     (all parameters)

mu = ``prox-mu`` (0.01 by default, NIID-Bench's value for CIFAR-10); mu = 0 is FedAvg. The
server sends mu with the cohort as a shared input, so a later stacked grid can vary it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedwsa.algorithms.base import ClientInputs, ClientTerm, ServerPart
from fedwsa.keys import key, number

if TYPE_CHECKING:
    from fedwsa.config import Config

NAME = "fedprox"
KEYS = (
    key("prox-mu", 0.01, number(0.0),
        "FedProx: weight mu of the proximal term mu/2 ||theta - theta_g||^2 (0 = FedAvg)."),
)


def proximal_term(params: Mapping[str, Tensor], global_params: Mapping[str, Tensor],
                  mu: Tensor) -> Tensor:
    """mu/2 * sum over every parameter of ||theta - theta_g||^2 (vmap-able)."""
    total = sum(((params[n] - global_params[n]) ** 2).sum() for n in params)
    return 0.5 * mu * total


class ProxTerm(ClientTerm):
    name = NAME

    def loss(self, params: Mapping[str, Tensor], global_params: Mapping[str, Tensor],
             shared: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> Tensor:
        return proximal_term(params, global_params, shared["mu"])


class ProxServer(ServerPart):
    name = NAME

    def __init__(self, config: Config) -> None:
        self.mu = config.prox_mu

    def client_inputs(self, server_round: int, global_params: Mapping[str, Tensor],
                      client_ids: Sequence[int]) -> ClientInputs:
        return ClientInputs(shared={"mu": torch.tensor(self.mu, dtype=torch.float32)})

    def describe(self) -> str:
        return f"fedprox: prox-mu {self.mu:g}"
