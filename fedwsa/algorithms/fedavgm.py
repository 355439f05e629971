"""FedAvgM (Hsu et al. 2019; METHODS.md section 4): server momentum on the pseudo-gradient.

    g = theta_g - merged;  v <- m v + g (v = g in the first round);  theta <- theta_g - eta v

m = ``server-momentum``, eta = ``server-lr``. Defaults are Flower's ``FedAvgM``'s (eta 1.0,
m 0.0, which is FedAvg itself); like Flower, m = 0 and eta = 1 returns the merged model
untouched, so that setting is bit-for-bit FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from fedwsa.algorithms.base import ServerOptimizer, Tensors, cloned_tensors
from fedwsa.keys import auto_number, number

if TYPE_CHECKING:
    from fedwsa.config import Config

NAME = "avgm"
DEFAULTS = {"server_lr": 1.0, "server_momentum": 0.0}
KEYS = (
    auto_number("server-momentum", number(0.0, 1.0, hi_open=True),
                "FedAvgM: server momentum m (auto: Flower's 0.0)."),
)


class FedAvgM(ServerOptimizer):
    name = NAME

    def __init__(self, config: Config) -> None:
        self.lr = DEFAULTS["server_lr"] if config.server_lr is None else config.server_lr
        self.momentum = (DEFAULTS["server_momentum"] if config.server_momentum is None
                         else config.server_momentum)
        self.velocity: Tensors | None = None

    def describe(self) -> str:
        return f"server-opt avgm: server-lr {self.lr:g}, server-momentum {self.momentum:g}"

    def step(self, server_round: int, global_params: Mapping[str, Tensor],
             merged: Mapping[str, Tensor]) -> Tensors:
        if self.momentum == 0.0 and self.lr == 1.0:
            return dict(merged)
        g = {n: global_params[n] - merged[n] for n in merged}
        if self.momentum > 0.0:
            # A velocity restored from a checkpoint is on the CPU: it follows the model.
            self.velocity = g if self.velocity is None else {
                n: self.momentum * self.velocity[n].to(g[n].device) + g[n] for n in g}
            g = self.velocity
        return {n: global_params[n] - self.lr * g[n] for n in g}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.velocity is None else {"velocity": dict(self.velocity)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.velocity = cloned_tensors(state["velocity"]) if "velocity" in state else None
