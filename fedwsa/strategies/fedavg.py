"""FedAvg (McMahan et al. 2017): the example-weighted average of the clients' weights."""

from __future__ import annotations

import torch

from fedwsa.merging import weighted_average
from fedwsa.strategies.cohort import ClientUpdates, CohortStrategy


class FedAvg(CohortStrategy):
    """theta_new = sum_i p_i theta_i with p_i = n_i / sum_j n_j (METHODS.md section 4)."""

    name = "fedavg"

    def aggregate(self, server_round: int, global_params: dict[str, torch.Tensor],
                  updates: ClientUpdates) -> dict[str, torch.Tensor]:
        return weighted_average(updates.params, updates.weights)
