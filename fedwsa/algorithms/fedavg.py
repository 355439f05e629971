"""FedAvg's merge rule (McMahan et al. 2017; METHODS.md section 4): the example-weighted mean.

theta_new = sum_i p_i theta_i, p_i = n_i / sum_j n_j. Every preset but CART's merges this way;
FedAvg itself is this merge with no client term and no server optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedwsa.algorithms.base import ClientUpdates, LinearMerge, Tensors


class WeightedMean(LinearMerge):
    """sum_i n_i theta_i / sum_i n_i, from the (node-summed) sum_i n_i theta_i in float64."""

    name = "mean"

    def coefficients(self, num_examples: Tensor, steps: Tensor) -> Tensor:
        return num_examples.to(torch.float64)

    def from_sums(self, global_params: Mapping[str, Tensor], sums: Mapping[str, Tensor],
                  updates: ClientUpdates) -> Tensors:
        total = float(self.coefficients(updates.num_examples, updates.steps).sum())
        if not total > 0:
            raise ValueError(f"the clients' example counts {updates.num_examples.tolist()} "
                             f"sum to {total}: nothing to average")
        return {n: (s / total).to(global_params[n].dtype) for n, s in sums.items()}
