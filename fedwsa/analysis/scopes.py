"""Weight scopes of the clients' layers: each client's weight histogram with its fitted Gaussian,
and how far the clients' scopes spread apart (the WSA paper's Figure 1; METHODS.md 1, 3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedwsa.maths.scope import regularised_names
from fedwsa.results.client_models import ClientModels


def fit_gaussian(weights: torch.Tensor) -> tuple[float, float]:
    """Maximum-likelihood Normal fit of a layer's weights: their mean and population std."""
    x = weights.detach().double().reshape(-1)
    mu = x.mean()
    return float(mu), float((x - mu).square().mean().sqrt())


@dataclass(frozen=True)
class LayerScopes:
    """One layer's fitted (mu, sigma) per client, and their spread across clients."""

    layer: str
    client_ids: list[int]
    mu: list[float]
    sigma: list[float]

    @property
    def mu_spread(self) -> float:
        """Population std of the clients' mu."""
        return float(torch.tensor(self.mu, dtype=torch.float64).std(correction=0))

    @property
    def sigma_spread(self) -> float:
        """Population std of the clients' sigma (``scope-sigma-spread``'s per-layer term)."""
        return float(torch.tensor(self.sigma, dtype=torch.float64).std(correction=0))


def client_scopes(clients: ClientModels) -> list[LayerScopes]:
    """Every regularised layer's (Conv and Linear weights) per-client Gaussian fits."""
    layers = regularised_names(clients.params, stacked=True)
    out = []
    for name in layers:
        fits = [fit_gaussian(w) for w in clients.params[name]]
        out.append(LayerScopes(name, list(clients.client_ids), [m for m, _ in fits],
                               [s for _, s in fits]))
    return out
