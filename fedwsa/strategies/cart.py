"""CART aggregation, alone and with WSA (METHODS.md section 2, "Centred low-rank aggregation").

``Cart`` trains clients as FedAvg does and replaces the server's weighted average with
``fedwsa.merging.cart``. ``FedWSACart`` keeps everything of ``FedWSA`` (the WSA target sent to
clients, scope fusion, optional alignment, checkpoint state) and swaps only its ``merge`` step.

Choices this module makes where METHODS.md leaves them open:

- Client weights are FedAvg's p_i = n_i / sum_j n_j of the clients that succeeded this round.
- The aggregation runs where ``device`` resolves to (the stacked weights are moved to the GPU
  when it is cuda: the per-client SVDs dominate a round's server time); the new global model is
  returned on the CPU, like FedAvg's.
- ``cart-svd = "randomized"`` draws its test matrices from a generator seeded by
  :func:`cart_seed` (``seed``, round), so a run is reproducible and a resumed run draws what the
  uninterrupted one drew; exact SVD uses no randomness.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
import torch
from flwr.common.logger import log
from torch import Tensor

from fedwsa.config import Config
from fedwsa.device import resolve_device
from fedwsa.merging import cart
from fedwsa.strategies.cohort import ClientUpdates, CohortStrategy
from fedwsa.strategies.wsa import FedWSA


def cart_seed(seed: int, server_round: int) -> int:
    """The randomized-SVD seed of one round: a hash of (``seed``, round), stable across runs."""
    state = np.random.SeedSequence([seed, server_round, 0xCA27]).generate_state(1, np.uint32)
    return int(state[0])


def cart_aggregate(config: Config, server_round: int, updates: ClientUpdates
                   ) -> dict[str, Tensor]:
    """``merging.cart`` of the round's clients with the ``cart-*`` keys of ``config``."""
    device = resolve_device(config.device)
    stacked = {n: v.to(device) for n, v in updates.params.items()}
    merged = cart(
        stacked, updates.weights.to(device), rank=config.cart_rank, lam=config.cart_lambda,
        conv=config.cart_conv, svd=config.cart_svd,
        seed=cart_seed(config.seed, server_round) if config.cart_svd == "randomized" else None,
    )
    return {n: v.cpu() for n, v in merged.items()}


def _log_cart(name: str, config: Config) -> None:
    log(INFO, "\t├──> %s: cart-rank %g, cart-lambda %g, cart-conv %s, cart-svd %s", name,
        config.cart_rank, config.cart_lambda, config.cart_conv, config.cart_svd)


class Cart(CohortStrategy):
    """FedAvg clients; the server merges them with CART instead of the weighted average."""

    name = "cart"

    def summary(self) -> None:
        super().summary()
        _log_cart(self.name, self.config)

    def aggregate(self, server_round: int, global_params: dict[str, torch.Tensor],
                  updates: ClientUpdates) -> dict[str, torch.Tensor]:
        return cart_aggregate(self.config, server_round, updates)


class FedWSACart(FedWSA):
    """WSA clients and scope fusion (``FedWSA``) with CART as the weight merge."""

    name = "fedwsa-cart"

    def summary(self) -> None:
        super().summary()
        _log_cart(self.name, self.config)

    def merge(self, server_round: int, global_params: dict[str, Tensor],
              updates: ClientUpdates) -> dict[str, Tensor]:
        """CART replaces FedWSA's weighted average; fusion and alignment follow unchanged."""
        return cart_aggregate(self.config, server_round, updates)
