"""FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021, "Adaptive Federated Optimization";
METHODS.md section 4): adaptive server optimisers on Delta = merged - theta_g.

    m <- beta1 m + (1 - beta1) Delta                      (m starts at 0)
    adam     v <- beta2 v + (1 - beta2) Delta^2           (v starts at 0)
    yogi     v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)
    adagrad  v <- v + Delta^2
    theta <- theta_g + eta m / (sqrt(v) + tau)

Flower 1.41's implementation is the reference (``flwr.serverapp.strategy.FedAdam`` etc.): its
FedAdam applies Adam's bias correction to eta, eta_t = eta sqrt(1 - beta2^(t+1)) /
(1 - beta1^(t+1)) with t the server round, and its FedYogi and FedAdagrad do not; FedAdagrad
has beta1 = 0. The ``auto`` defaults are Flower's for each: adam eta 0.1, beta1 0.9, beta2
0.99, tau 1e-3; yogi eta 0.01, beta1 0.9, beta2 0.99, tau 1e-3; adagrad beta1 0, tau 1e-3,
but eta 0.01, not Flower's 0.1: Adagrad's first step is about eta sign(Delta) on every weight,
and at 0.1 the global model stayed at chance for 25 rounds on real CIFAR-10 (Dirichlet 0.1;
grids/server-opt-sweep.toml, docs/defaults-sweep.md), while 0.01 trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedwsa.algorithms.base import ServerOptimizer, Tensors, cloned_tensors
from fedwsa.keys import auto_number, number

if TYPE_CHECKING:
    from fedwsa.config import Config

DEFAULTS: dict[str, dict[str, float]] = {
    "adam": {"server_lr": 0.1, "server_beta1": 0.9, "server_beta2": 0.99, "server_tau": 1e-3},
    "yogi": {"server_lr": 0.01, "server_beta1": 0.9, "server_beta2": 0.99, "server_tau": 1e-3},
    "adagrad": {"server_lr": 0.01, "server_beta1": 0.0, "server_beta2": 0.0, "server_tau": 1e-3},
}
KEYS = (
    auto_number("server-beta1", number(0.0, 1.0, hi_open=True),
                "FedAdam/FedYogi/FedAdagrad: first-moment decay (auto: Flower's, 0.9; "
                "0 for adagrad)."),
    auto_number("server-beta2", number(0.0, 1.0, hi_open=True),
                "FedAdam/FedYogi: second-moment decay (auto: Flower's 0.99)."),
    auto_number("server-tau", number(0.0, lo_open=True),
                "FedAdam/FedYogi/FedAdagrad: adaptivity tau (auto: Flower's 1e-3)."),
)


class FedOpt(ServerOptimizer):
    """One of adam, yogi, adagrad (``kind``), with Flower's update rules and defaults."""

    def __init__(self, config: Config, kind: str) -> None:
        self.name = kind
        d = DEFAULTS[kind]

        def pick(attr: str) -> float:
            value = getattr(config, attr)
            return d[attr] if value is None else float(value)

        self.eta, self.beta1 = pick("server_lr"), pick("server_beta1")
        self.beta2, self.tau = pick("server_beta2"), pick("server_tau")
        self.m: Tensors | None = None
        self.v: Tensors | None = None

    def describe(self) -> str:
        return (f"server-opt {self.name}: server-lr {self.eta:g}, beta1 {self.beta1:g}, "
                f"beta2 {self.beta2:g}, tau {self.tau:g}")

    def step(self, server_round: int, global_params: Mapping[str, Tensor],
             merged: Mapping[str, Tensor]) -> Tensors:
        delta = {n: merged[n] - global_params[n] for n in merged}
        # Moments restored from a checkpoint are on the CPU: they follow the model.
        m = ({n: self.m[n].to(d.device) for n, d in delta.items()} if self.m
             else {n: torch.zeros_like(d) for n, d in delta.items()})
        v = ({n: self.v[n].to(d.device) for n, d in delta.items()} if self.v
             else {n: torch.zeros_like(d) for n, d in delta.items()})
        self.m = {n: self.beta1 * m[n] + (1 - self.beta1) * d for n, d in delta.items()}
        if self.name == "adam":
            self.v = {n: self.beta2 * v[n] + (1 - self.beta2) * d**2 for n, d in delta.items()}
            eta = (self.eta * math.sqrt(1 - self.beta2 ** (server_round + 1.0))
                   / (1 - self.beta1 ** (server_round + 1.0)))
        elif self.name == "yogi":
            self.v = {n: v[n] - (1 - self.beta2) * d**2 * torch.sign(v[n] - d**2)
                      for n, d in delta.items()}
            eta = self.eta
        else:
            self.v = {n: v[n] + d**2 for n, d in delta.items()}
            eta = self.eta
        return {n: global_params[n] + eta * self.m[n] / (self.v[n].sqrt() + self.tau)
                for n in delta}

    def state_dict(self) -> dict[str, Any]:
        if self.m is None or self.v is None:
            return {}
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = cloned_tensors(state["m"]) if "m" in state else None
        self.v = cloned_tensors(state["v"]) if "v" in state else None
