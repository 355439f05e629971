"""CART, centred low-rank aggregation (METHODS.md section 2) as a merge rule.

Replaces the weighted mean with ``fedwsa.maths.merging.cart`` of the round's clients.

Choices this module makes where METHODS.md leaves them open:

- Client weights are FedAvg's p_i = n_i / sum_j n_j of the clients that succeeded this round.
- The merge runs where ``device`` resolves to (the stacked weights are moved to the GPU when it
  is cuda: the per-client SVDs dominate a round's server time); the new global model is
  returned on the device the clients' weights came on (the server's: the CPU), as every merge
  rule returns it.
- ``cart-svd = "randomized"`` draws its test matrices from a generator seeded by
  :func:`cart_seed` (``seed``, round), so a run is reproducible and a resumed run draws what the
  uninterrupted one drew; exact SVD uses no randomness.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from fedwsa.algorithms.base import ClientUpdates, Merge, Tensors
from fedwsa.device import resolve_device
from fedwsa.keys import boolean, choice, key, number
from fedwsa.maths.merging import SVD_METHODS, cart

if TYPE_CHECKING:
    from fedwsa.config import Config

NAME = "cart"
KEYS = (
    key("cart-rank", 0.1, number(0.0, 1.0, lo_open=True),
        "CART: kept rank as a fraction of min(rows, cols)."),
    key("cart-lambda", 0.3, number(0.0), "CART: scale of the low-rank centred updates."),
    key("cart-conv", True, boolean(), "CART: treat conv kernels as out x (in*kh*kw) matrices."),
    key("cart-svd", "exact", choice(*SVD_METHODS), "CART: exact or randomized SVD."),
)


def cart_seed(seed: int, server_round: int) -> int:
    """The randomized-SVD seed of one round: a hash of (``seed``, round), stable across runs."""
    state = np.random.SeedSequence([seed, server_round, 0xCA27]).generate_state(1, np.uint32)
    return int(state[0])


class CartMerge(Merge):
    name = NAME

    def __init__(self, config: Config) -> None:
        self.config = config

    def describe(self) -> str:
        c = self.config
        return (f"cart: cart-rank {c.cart_rank:g}, cart-lambda {c.cart_lambda:g}, "
                f"cart-conv {c.cart_conv}, cart-svd {c.cart_svd}")

    def merge(self, server_round: int, global_params: Mapping[str, Tensor],
              updates: ClientUpdates) -> Tensors:
        c = self.config
        device = resolve_device(c.device)
        stacked = {n: v.to(device) for n, v in updates.params.items()}
        # The weights stay where they are (the CPU): ``cart`` checks them there (no device
        # sync) and moves p to the stacked weights' device itself.
        merged = cart(
            stacked, updates.weights, rank=c.cart_rank, lam=c.cart_lambda,
            conv=c.cart_conv, svd=c.cart_svd,
            seed=cart_seed(c.seed, server_round) if c.cart_svd == "randomized" else None,
        )
        return {n: v.to(updates.params[n].device) for n, v in merged.items()}
