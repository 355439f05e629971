"""The algorithm registry: which parts each strategy preset composes, and every algorithm key.

A strategy is ``post(server_opt(merge(updates)))`` with the client objective's terms (DESIGN.md,
"Algorithms are parts, strategies are compositions"). ``strategy`` names a preset of that
composition; ``server-opt`` adds a server optimiser to any preset. This module is the one
source of the preset names, the server optimiser names and the algorithms' config keys.
Adding an algorithm = one module + an entry here + its tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from fedwsa.algorithms import cart, fedavgm, fedopt, fedprox, wsa
from fedwsa.algorithms.base import (
    ClientInputs,
    ClientTerm,
    ClientUpdates,
    Merge,
    ServerOptimizer,
    ServerPart,
)
from fedwsa.algorithms.fedavg import WeightedMean
from fedwsa.keys import AUTO, ConfigError, auto_number, choice, key, number

if TYPE_CHECKING:
    from fedwsa.config import Config


@dataclass(frozen=True)
class Preset:
    """A named strategy: client terms, merge rule, server optimiser, and its paper."""

    terms: tuple[str, ...]
    merge: str
    server_opt: str
    paper: str


PRESETS: dict[str, Preset] = {
    "fedavg": Preset((), "mean", "none", "McMahan et al. 2017"),
    "fedprox": Preset(("fedprox",), "mean", "none", "Li et al. 2020"),
    "fedwsa": Preset(("wsa",), "mean", "none", "Xu et al. 2024 (Weight Scope Alignment)"),
    "cart": Preset((), "cart", "none", "Choi et al. 2024 (centred low-rank merging)"),
    "fedwsa-cart": Preset(("wsa",), "cart", "none", "WSA clients, CART merge"),
    "fedavgm": Preset((), "mean", "avgm", "Hsu et al. 2019"),
    "fedadam": Preset((), "mean", "adam", "Reddi et al. 2021"),
    "fedyogi": Preset((), "mean", "yogi", "Reddi et al. 2021"),
    "fedadagrad": Preset((), "mean", "adagrad", "Reddi et al. 2021"),
}
STRATEGIES = tuple(PRESETS)
SERVER_OPTS = ("none", "avgm", "adam", "yogi", "adagrad")
FUSION_RULES = wsa.FUSION_RULES
SVD_METHODS = cart.SVD_METHODS

KEYS = (
    key("server-opt", AUTO, choice(AUTO, *SERVER_OPTS),
        "Server optimiser on the pseudo-gradient (auto: the strategy's own, none for "
        "fedavg, fedprox, fedwsa, cart, fedwsa-cart)."),
    auto_number("server-lr", number(0.0, lo_open=True),
                "Server learning rate eta (auto: Flower's default for the optimiser: avgm 1.0, "
                "adam 0.1, yogi 0.01, adagrad 0.1)."),
    *fedavgm.KEYS,
    *fedopt.KEYS,
    *fedprox.KEYS,
    *wsa.KEYS,
    *cart.KEYS,
)


def server_opt_of(strategy: str, server_opt: str) -> str:
    """The server optimiser a run uses; ``ConfigError`` when the two keys contradict."""
    own = PRESETS[strategy].server_opt
    if server_opt == AUTO:
        return own
    if own != "none" and server_opt != own:
        raise ConfigError("server-opt", server_opt,
                          f"'auto' or '{own}' with strategy='{strategy}' (its own optimiser); "
                          f"use strategy='fedavg' server-opt='{server_opt}' for another")
    return server_opt


def client_terms(config: Config, params: Mapping[str, Tensor]) -> list[ClientTerm]:
    """The client-side terms of ``config``'s strategy (``params``: the model's, for names)."""
    terms: list[ClientTerm] = []
    for name in PRESETS[config.strategy].terms:
        if name == "fedprox":
            terms.append(fedprox.ProxTerm())
        elif name == "wsa":
            terms.append(wsa.WsaTerm(wsa.resolve_wsa_layers(config.wsa_layers, params)))
    return terms


@dataclass
class Composition:
    """A strategy's server side: the client terms' server parts, merge rule, optimiser."""

    parts: list[ServerPart]
    merge: Merge
    optimizer: ServerOptimizer | None

    def all_parts(self) -> list[ServerPart]:
        return [*self.parts, self.merge, *([self.optimizer] if self.optimizer else [])]


def compose(config: Config, params: Mapping[str, Tensor]) -> Composition:
    """The server-side composition of ``config``'s preset and ``server-opt``."""
    preset = PRESETS[config.strategy]
    parts: list[ServerPart] = []
    for name in preset.terms:
        if name == "fedprox":
            parts.append(fedprox.ProxServer(config))
        elif name == "wsa":
            parts.append(wsa.WsaTarget(config, params))
    merge: Merge = cart.CartMerge(config) if preset.merge == "cart" else WeightedMean()
    opt = server_opt_of(config.strategy, config.server_opt)
    optimizer: ServerOptimizer | None = None
    if opt == "avgm":
        optimizer = fedavgm.FedAvgM(config)
    elif opt != "none":
        optimizer = fedopt.FedOpt(config, opt)
    return Composition(parts, merge, optimizer)


__all__ = ["KEYS", "PRESETS", "SERVER_OPTS", "STRATEGIES", "ClientInputs", "ClientTerm",
           "ClientUpdates", "Composition", "client_terms", "compose", "server_opt_of"]
