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

from fedwsa.algorithms.base import ClientUpdates, LinearMerge, Tensors

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


class FedNovaMerge(LinearMerge):
    """theta_g - tau_eff * sum_i (n_i / a_i)(theta_g - theta_i) / N, N = sum_i n_i: linear in
    sum_i c_i theta_i with c_i = n_i / a_i, so nodes may send that sum."""

    name = NAME

    def __init__(self, config: Config) -> None:
        self.momentum = config.momentum

    def describe(self) -> str:
        return f"fednova: normalised averaging, client momentum {self.momentum:g}"

    def coefficients(self, num_examples: Tensor, steps: Tensor) -> Tensor:
        if steps.numel() != num_examples.numel() or bool((steps < 1).any()):
            raise ValueError(f"fednova needs every client's local step count (>= 1), got "
                             f"{steps.tolist()} for {num_examples.numel()} clients")
        return num_examples.to(torch.float64) / normaliser(steps.cpu(), self.momentum)

    def from_sums(self, global_params: Mapping[str, Tensor], sums: Mapping[str, Tensor],
                  updates: ClientUpdates) -> Tensors:
        n = updates.num_examples.to(torch.float64)
        a = normaliser(updates.steps.cpu(), self.momentum)
        c = self.coefficients(updates.num_examples, updates.steps)
        total, tau_eff = float(n.sum()), float((n * a).sum() / n.sum())
        coeff_sum = float(c.sum())
        out: Tensors = {}
        for name, s in sums.items():
            g = global_params[name].to(s.device, torch.float64)
            d = (g * coeff_sum - s) / total   # sum_i p_i (theta_g - theta_i) / a_i
            out[name] = (g - tau_eff * d).to(global_params[name].dtype)
        return out
