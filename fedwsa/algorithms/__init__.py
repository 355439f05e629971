"""The algorithm registry: which parts each strategy preset composes, and every algorithm key.

A strategy is ``post(server_opt(merge(updates)))`` with the client objective's terms (DESIGN.md,
"Algorithms are parts, strategies are compositions"). ``strategy`` names a preset of that
composition; ``server-opt`` adds a server optimiser to any preset. This module is the one
source of the preset names, the server optimiser names and the algorithms' config keys.
Adding an algorithm = one module + an entry here + its tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from torch import Tensor

from fedwsa.algorithms import cart, fedavgm, fednova, fedopt, fedprox, scaffold, wsa
from fedwsa.algorithms.base import (
    ClientInputs,
    ClientTerm,
    ClientUpdates,
    LinearMerge,
    Merge,
    ServerOptimizer,
    ServerPart,
)
from fedwsa.algorithms.fedavg import WeightedMean
from fedwsa.keys import AUTO, ConfigError, Key, auto_number, choice, key, number

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
    "fednova": Preset((), "fednova", "none", "Wang et al. 2020 (NIID-Bench's normaliser)"),
    "scaffold": Preset(("scaffold",), "mean", "none",
                       "Karimireddy et al. 2020 (NIID-Bench's variant)"),
    "fedwsa-fednova": Preset(("wsa",), "fednova", "none", "WSA clients, FedNova merge"),
    "fedwsa-scaffold": Preset(("wsa", "scaffold"), "mean", "none",
                              "WSA clients with SCAFFOLD's control variates"),
    "fedavgm": Preset((), "mean", "avgm", "Hsu et al. 2019"),
    "fedadam": Preset((), "mean", "adam", "Reddi et al. 2021"),
    "fedyogi": Preset((), "mean", "yogi", "Reddi et al. 2021"),
    "fedadagrad": Preset((), "mean", "adagrad", "Reddi et al. 2021"),
}
STRATEGIES = tuple(PRESETS)

# Each client-objective algorithm module offers client_term(config, params) and
# server_part(config, params); merge rules and server optimisers are built from the config.
CLIENT_ALGORITHMS: dict[str, ModuleType] = {"fedprox": fedprox, "wsa": wsa,
                                            "scaffold": scaffold}
MERGES: dict[str, Callable[[Config], Merge]] = {
    "mean": lambda config: WeightedMean(),
    "cart": cart.CartMerge,
    "fednova": fednova.FedNovaMerge,
}
OPTIMIZERS: dict[str, Callable[[Config], ServerOptimizer]] = {
    "avgm": fedavgm.FedAvgM,
    **{kind: functools.partial(fedopt.FedOpt, kind=kind) for kind in fedopt.DEFAULTS},
}
SERVER_OPTS = ("none", *OPTIMIZERS)
assert all(set(p.terms) <= set(CLIENT_ALGORITHMS) and p.merge in MERGES
           and p.server_opt in SERVER_OPTS for p in PRESETS.values())
FUSION_RULES = wsa.FUSION_RULES
SVD_METHODS = cart.SVD_METHODS

KEYS = (
    key("server-opt", AUTO, choice(AUTO, *SERVER_OPTS),
        "Server optimiser on the pseudo-gradient (auto: the strategy's own; none but for "
        f"{', '.join(n for n, p in PRESETS.items() if p.server_opt != 'none')})."),
    auto_number("server-lr", number(0.0, lo_open=True),
                "Server learning rate eta (auto: the optimiser's default, "
                f"avgm {fedavgm.DEFAULTS['server_lr']:g}, "
                + ", ".join(f"{k} {d['server_lr']:g}" for k, d in fedopt.DEFAULTS.items())
                + "; Flower's but for adagrad, whose 0.1 did not train)."),
    *fedavgm.KEYS,
    *fedopt.KEYS,
    *fedprox.KEYS,
    *wsa.KEYS,
    *cart.KEYS,
    *scaffold.KEYS,
)


# The keys each part reads: a key that no part of a run's strategy reads cannot change it.
_PART_KEYS: dict[str, tuple[Key, ...]] = {
    "fedprox": fedprox.KEYS, "wsa": wsa.KEYS, "scaffold": scaffold.KEYS, "cart": cart.KEYS,
    "avgm": fedavgm.KEYS, **{kind: fedopt.KEYS for kind in fedopt.DEFAULTS},
}


def unused_keys(strategy: str, server_opt: str) -> frozenset[str]:
    """The algorithm keys that no part of ``strategy`` (with ``server-opt``) reads, so their
    values (and a changed default of theirs) do not change what such a run trains."""
    preset = PRESETS[strategy]
    opt = server_opt_of(strategy, server_opt)
    used = {*preset.terms, preset.merge, opt}
    read = {k.name for part in used for k in _PART_KEYS.get(part, ())}
    if opt != "none":
        read.add("server-lr")
    every = {k.name for keys in _PART_KEYS.values() for k in keys} | {"server-lr"}
    return frozenset(every - read)


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
    return [CLIENT_ALGORITHMS[name].client_term(config, params)
            for name in PRESETS[config.strategy].terms]


@dataclass
class Composition:
    """A strategy's server side: the client terms' server parts, merge rule, optimiser."""

    parts: list[ServerPart]
    merge: Merge
    optimizer: ServerOptimizer | None

    def all_parts(self) -> list[ServerPart]:
        return [*self.parts, self.merge, *([self.optimizer] if self.optimizer else [])]


def linear_merge(config: Config) -> LinearMerge | None:
    """The merge rule of ``config``'s strategy when it is linear in the clients' weights (a
    node may then send their sum, ``node-aggregate``), else None. Built from the config alone:
    a node calls this for the clients' coefficients."""
    merge = MERGES[PRESETS[config.strategy].merge](config)
    return merge if isinstance(merge, LinearMerge) else None


def compose(config: Config, params: Mapping[str, Tensor]) -> Composition:
    """The server-side composition of ``config``'s preset and ``server-opt``."""
    preset = PRESETS[config.strategy]
    parts = [CLIENT_ALGORITHMS[name].server_part(config, params) for name in preset.terms]
    opt = server_opt_of(config.strategy, config.server_opt)
    optimizer = None if opt == "none" else OPTIMIZERS[opt](config)
    return Composition(parts, MERGES[preset.merge](config), optimizer)


__all__ = ["KEYS", "PRESETS", "SERVER_OPTS", "STRATEGIES", "ClientInputs", "ClientTerm",
           "ClientUpdates", "Composition", "LinearMerge", "client_terms", "compose",
           "linear_merge", "server_opt_of"]
