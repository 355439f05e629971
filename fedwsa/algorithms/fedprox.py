"""FedProx (Li et al. 2020; METHODS.md section 4): a proximal term in each client's loss.

    loss_i = cross_entropy + mu/2 * ||theta - theta_g||^2     (all parameters)

mu = ``prox-mu`` (0.01 by default, NIID-Bench's value for CIFAR-10); mu = 0 is FedAvg. The
server sends mu with the cohort as a shared input, so a later stacked grid can vary it.

The term enters as its gradient, mu (theta - theta_g), added to the loss gradient before each
SGD step: the same step as differentiating the loss above (tests/test_reference_trainer.py
checks it against a hand-written loop that does), without autograd through ``vmap`` for it,
which made a batched FedProx round ~8% slower than FedAvg's; this way it is three ``_foreach``
calls per step. The reported train loss is the cross-entropy, as for every strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedwsa.algorithms.base import ClientInputs, ClientTerm, ServerPart, Tensors
from fedwsa.keys import key, number

if TYPE_CHECKING:
    from fedwsa.config import Config

NAME = "fedprox"
KEYS = (
    key("prox-mu", 0.01, number(0.0),
        "FedProx: weight mu of the proximal term mu/2 ||theta - theta_g||^2 (0 = FedAvg)."),
)


class ProxTerm(ClientTerm):
    name = NAME

    def correct_grad(self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor],
                     global_params: Mapping[str, Tensor], shared: Mapping[str, Tensor],
                     own: Mapping[str, Tensor]) -> None:
        """grad += mu (theta - theta_g), the gradient of mu/2 ||theta - theta_g||^2.

        ``mu`` is one number, or one per client when clients of several runs train together
        (then it is broadcast over each weight's dimensions)."""
        names = list(grads)
        diff = torch._foreach_sub([params[n] for n in names], [global_params[n] for n in names])
        mu = shared["mu"]
        if mu.dim() == 0:
            torch._foreach_mul_(diff, mu)
        else:
            torch._foreach_mul_(diff, [mu.view(-1, *[1] * (d.dim() - 1)) for d in diff])
        torch._foreach_add_([grads[n] for n in names], diff)

    def idle_inputs(self, shared: Tensors, own: Tensors) -> tuple[Tensors, Tensors]:
        """mu = 0: the gradient gains mu (theta - theta_g) = 0."""
        return {"mu": torch.zeros_like(shared["mu"])}, {}


class ProxServer(ServerPart):
    name = NAME

    def __init__(self, config: Config) -> None:
        self.mu = config.prox_mu

    def client_inputs(self, server_round: int, global_params: Mapping[str, Tensor],
                      client_ids: Sequence[int]) -> ClientInputs:
        return ClientInputs(shared={"mu": torch.tensor(self.mu, dtype=torch.float32)})

    def describe(self) -> str:
        return f"fedprox: prox-mu {self.mu:g}"


def client_term(config: Config, params: Mapping[str, Tensor]) -> ProxTerm:
    return ProxTerm()


def server_part(config: Config, params: Mapping[str, Tensor]) -> ProxServer:
    return ProxServer(config)
