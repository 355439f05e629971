"""FedNova (Wang et al. 2020; METHODS.md section 4) with NIID-Bench's momentum-aware normaliser.

A client that made tau_i local SGD steps with momentum rho has

    a_i = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)      (a_i = tau_i when rho = 0)

and the server normalises each client's update by it before averaging:

    theta <- theta_g - (sum_i p_i a_i) * sum_i p_i (theta_g - theta_i) / a_i

with p_i = n_i / sum_j n_j. This follows NIID-Bench's ``train_net_fednova`` / its server step
(``experiments.py``), which is the paper's rule for momentum SGD. Clients train as FedAvg's do;
the trainers report every client's step count (ragged clients make different counts). Equal
step counts with rho = 0 reduce it to FedAvg (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedwsa.algorithms.base import ClientUpdates, Merge, Tensors

if TYPE_CHECKING:
    from fedwsa.config import Config

NAME = "fednova"


def normaliser(steps: Tensor, momentum: float) -> Tensor:
    """a_i for each client's step count tau_i (float64)."""
    tau = steps.to(torch.float64)
    if momentum == 0.0:
        return tau
    rho = float(momentum)
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


class FedNovaMerge(Merge):
    name = NAME

    def __init__(self, config: Config) -> None:
        self.momentum = config.momentum

    def describe(self) -> str:
        return f"fednova: normalised averaging, client momentum {self.momentum:g}"

    def merge(self, server_round: int, global_params: Mapping[str, Tensor],
              updates: ClientUpdates) -> Tensors:
        if updates.steps.numel() != len(updates.client_ids) or bool((updates.steps < 1).any()):
            raise ValueError(f"fednova needs every client's local step count (>= 1), got "
                             f"{updates.steps.tolist()} for clients {updates.client_ids}")
        p = updates.weights.to(torch.float64)
        a = normaliser(updates.steps.to(p.device), self.momentum)
        coeff = p / a                       # weight of each client's (theta_g - theta_i)
        tau_eff = float((p * a).sum())
        out: Tensors = {}
        for name, stacked in updates.params.items():
            g = global_params[name].to(stacked.device, torch.float64)
            diff = g.unsqueeze(0) - stacked.to(torch.float64)
            d = torch.tensordot(coeff.to(stacked.device), diff, dims=1)
            out[name] = (g - tau_eff * d).to(stacked.dtype)
        return out
