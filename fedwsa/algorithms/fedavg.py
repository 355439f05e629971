"""FedAvg's merge rule (McMahan et al. 2017; METHODS.md section 4): the example-weighted mean.

theta_new = sum_i p_i theta_i, p_i = n_i / sum_j n_j. Every preset but CART's merges this way;
FedAvg itself is this merge with no client term and no server optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from fedwsa.algorithms.base import ClientUpdates, Merge, Tensors
from fedwsa.maths.merging import weighted_average


class WeightedMean(Merge):
    name = "mean"

    def merge(self, server_round: int, global_params: Mapping[str, Tensor],
              updates: ClientUpdates) -> Tensors:
        return weighted_average(updates.params, updates.weights)
