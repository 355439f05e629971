"""Weight Scope Alignment (METHODS.md section 1, "Weight scope"): client term and server target.

Client side (1.1, "WSA regulariser"): each client adds ``beta * sum_l KL(scope_l || target_l)``
to its loss, over the ``wsa-layers``. Server side (1.2, "Target and scope fusion"): round 1's
target is the scope of the initial global model; after each round the server fuses the scopes
of the clients that took part (computed from their returned weights) into the next target with
``wsa-fusion``, and with ``wsa-align-global`` rescales the new global model to it.

Choices this module makes where METHODS.md leaves them open:

- ``wsa-layers`` selects among the regularised layers only (Conv and Linear weights, as
  ``scope.regularised_names`` finds them); biases and norm parameters are refused, because a
  scope of a handful of values (or of one) is not the Gaussian the method fits. The selected
  names are kept in the model's parameter order, whatever order the key lists them in.
- Fusion weights are FedAvg's p_i = n_i / sum_j n_j of the clients that succeeded this round.
- Fusion runs after the merge rule and the server optimiser; ``global`` fusion takes the scope
  of that new global model *before* ``wsa-align-global`` rescales it.
- If a round keeps the previous global model (too few clients succeeded), the target is kept.
- ``wsa-kl`` is measured against the target sent in that round, over the ``wsa-layers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedwsa.algorithms.base import ClientInputs, ClientTerm, ClientUpdates, ServerPart, Tensors
from fedwsa.keys import ConfigError, any_string, boolean, choice, key, number
from fedwsa.maths.scope import (
    FUSION_RULES,
    align_to_scope,
    fuse_scopes,
    model_scopes,
    regularised_names,
    wsa_penalty,
)

if TYPE_CHECKING:
    from fedwsa.config import Config

NAME = "wsa"
KEYS = (
    key("wsa-beta", 0.03, number(0.0), "WSA: weight of the scope KL term (0 = off)."),
    key("wsa-fusion", "mean", choice(*FUSION_RULES), "WSA: how client scopes become the target."),
    key("wsa-layers", "all", any_string(),
        "WSA: 'all' regularised layers, or comma-separated parameter names."),
    key("wsa-align-global", False, boolean(),
        "WSA: rescale the global model's layers to the fused scope."),
)


def resolve_wsa_layers(value: str, params: Mapping[str, Tensor]) -> list[str]:
    """The layer names ``wsa-layers`` selects, in model order; ``ConfigError`` if invalid.

    ``"all"`` is every regularised layer; otherwise a comma-separated list of regularised
    parameter names (spaces around commas are ignored), without duplicates.
    """
    allowed = regularised_names(params)
    accepted = "'all' or comma-separated names among: " + ", ".join(allowed)
    if value.strip() == "all":
        return allowed
    requested = [n.strip() for n in value.split(",")]
    if not requested or any(not n for n in requested):
        raise ConfigError("wsa-layers", value, accepted)
    unknown = [n for n in requested if n not in allowed]
    if unknown or len(set(requested)) != len(requested):
        raise ConfigError("wsa-layers", value, accepted)
    return [n for n in allowed if n in requested]


class WsaTerm(ClientTerm):
    """beta * sum_l KL(scope_l || target_l) over the named layers (METHODS.md 1.1)."""

    name = NAME

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def fuse_key(self) -> tuple[Any, ...]:
        return tuple(self.names)

    def loss(self, params: Mapping[str, Tensor], global_params: Mapping[str, Tensor],
             shared: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> Tensor:
        return shared["beta"] * wsa_penalty(params, self.names, shared["mu"], shared["sigma"])

    def idle_inputs(self, shared: Tensors, own: Tensors) -> tuple[Tensors, Tensors]:
        """beta = 0 against a unit-scope target: the loss gains 0 * KL, whose gradient is 0
        while the KL is finite (a diverging client whose layer variance overflows float32
        would get NaN: ``fedwsa.clients.fused``)."""
        return {"beta": torch.zeros_like(shared["beta"]), "mu": torch.zeros_like(shared["mu"]),
                "sigma": torch.ones_like(shared["sigma"])}, {}


class WsaTarget(ServerPart):
    """The target scope sent to the clients, fused from their scopes after each round."""

    name = NAME

    def __init__(self, config: Config, params: Mapping[str, Tensor]) -> None:
        self.beta = config.wsa_beta
        self.rule = config.wsa_fusion
        self.align = config.wsa_align_global
        self.layer_names = resolve_wsa_layers(config.wsa_layers, params)
        self._target: tuple[Tensor, Tensor] | None = None    # next round's (mu*, sigma*) [L]
        self._initial: tuple[Tensor, Tensor] | None = None   # round 1's target (`fixed`)

    def describe(self) -> str:
        return (f"wsa: beta {self.beta:g}, fusion {self.rule}, {len(self.layer_names)} "
                f"layer(s), align-global {self.align}")

    @property
    def target(self) -> tuple[Tensor, Tensor] | None:
        """The target the next round sends, or None before round 1."""
        return self._target

    def _ensure_target(self, global_params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Round 1 (or a fresh strategy): the scope of the global model being sent."""
        if self._target is None:
            names = self.layer_names
            mu, sigma = model_scopes({n: global_params[n].detach().cpu() for n in names}, names)
            self._target = (mu.clone(), sigma.clone())
            self._initial = (mu.clone(), sigma.clone())
        return self._target

    def client_inputs(self, server_round: int, global_params: Mapping[str, Tensor],
                      client_ids: Sequence[int]) -> ClientInputs:
        mu, sigma = self._ensure_target(global_params)
        return ClientInputs(shared={"beta": torch.tensor(self.beta, dtype=torch.float32),
                                    "mu": mu.float(), "sigma": sigma.float()})

    def after_merge(self, server_round: int, global_params: Mapping[str, Tensor],
                    new_global: Tensors, updates: ClientUpdates) -> Tensors:
        """Fuse the clients' scopes into the next target; optionally align the new model."""
        names = self.layer_names
        self._ensure_target(global_params)
        mu_c, sigma_c = updates.client_scopes(names)
        global_scope = model_scopes(new_global, names) if self.rule == "global" else None
        mu_t, sigma_t = fuse_scopes(mu_c, sigma_c, updates.weights, self.rule,
                                    global_scope=global_scope, fixed_scope=self._initial)
        mu_t, sigma_t = mu_t.detach().cpu().clone(), sigma_t.detach().cpu().clone()
        self._target = (mu_t, sigma_t)
        if self.align:
            new_global = align_to_scope(new_global, names, mu_t, sigma_t)
        return new_global

    def metric_target(self, global_params: Mapping[str, Tensor]
                      ) -> tuple[list[str], Tensor, Tensor]:
        """The target sent this round (metrics are taken before ``after_merge``)."""
        mu, sigma = self._ensure_target(global_params)
        return list(self.layer_names), mu, sigma

    def state_dict(self) -> dict[str, Any]:
        """The target and round 1's target as tensors, and the layer names they belong to."""
        state: dict[str, Any] = {"names": list(self.layer_names)}
        if self._target is not None and self._initial is not None:
            state["target-mu"], state["target-sigma"] = (t.clone() for t in self._target)
            state["initial-mu"], state["initial-sigma"] = (t.clone() for t in self._initial)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s output; the checkpoint must be for the same ``wsa-layers``."""
        names = list(state.get("names", []))
        if names != self.layer_names:
            raise ValueError(f"checkpointed WSA layers {names} differ from this run's "
                             f"wsa-layers {self.layer_names}")
        if "target-mu" not in state:
            self._target = self._initial = None
            return

        def tensor(key: str) -> Tensor:
            value = torch.as_tensor(state[key]).detach().cpu().clone()
            if not value.is_floating_point():
                value = value.to(torch.float32)
            if value.shape != (len(names),):
                raise ValueError(f"checkpointed {key} has shape {tuple(value.shape)}, "
                                 f"expected ({len(names)},)")
            return value

        self._target = (tensor("target-mu"), tensor("target-sigma"))
        self._initial = (tensor("initial-mu"), tensor("initial-sigma"))


def client_term(config: Config, params: Mapping[str, Tensor]) -> WsaTerm:
    return WsaTerm(resolve_wsa_layers(config.wsa_layers, params))


def server_part(config: Config, params: Mapping[str, Tensor]) -> WsaTarget:
    return WsaTarget(config, params)
