"""FedWSA: FedAvg plus Weight Scope Alignment (METHODS.md section 1, "Weight scope").

Each round the server sends the clients a target scope (mu*, sigma*) per regularised layer;
clients add ``wsa-beta * sum_l KL(scope_l || target_l)`` to their loss (section 1.1, "WSA
regulariser"). After FedAvg aggregation the server computes the participating clients' scopes
from their returned weights and fuses them into the next round's target with ``wsa-fusion``
(section 1.2, "Target and scope fusion"); round 1's target is the scope of the initial global
model.

Choices this module makes where METHODS.md leaves them open:

- ``wsa-layers`` selects among the regularised layers only (Conv and Linear weights, as
  ``scope.regularised_names`` finds them); biases and norm parameters are refused, because a
  scope of a handful of values (or of one) is not the Gaussian the method fits. The selected
  names are kept in the model's parameter order, whatever order the key lists them in.
- Fusion weights are FedAvg's p_i = n_i / sum_j n_j of the clients that succeeded this round.
- ``global`` fusion takes the scope of the new global model *before* ``wsa-align-global``
  rescales it (aligning a model to its own scope would change nothing anyway).
- If a round keeps the previous global model (too few clients succeeded), the target is kept
  too: ``aggregate`` is not called for that round.
- ``wsa-kl`` for FedWSA is measured against the target sent in that round, over the
  ``wsa-layers`` (the quantity the clients' regulariser minimised); ``scope-sigma-spread`` uses
  every regularised layer, as for every strategy (``CohortStrategy.round_metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from logging import INFO

import torch
from flwr.common.logger import log
from torch import Tensor

from fedwsa.config import Config, ConfigError
from fedwsa.merging import weighted_average
from fedwsa.models import build_model
from fedwsa.scope import (
    align_to_scope,
    fuse_scopes,
    model_scopes,
    regularised_names,
    stacked_scopes,
)
from fedwsa.strategies.cohort import ClientUpdates, CohortStrategy


def model_parameters(config: Config) -> dict[str, Tensor]:
    """``config.model``'s parameters on the meta device: names and shapes, no weights."""
    num_classes = 100 if config.dataset == "cifar100" else 10
    with torch.device("meta"):
        model = build_model(config.model, num_classes)
    return dict(model.named_parameters())


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


class FedWSA(CohortStrategy):
    """FedAvg aggregation + server-side scope fusion into the clients' WSA target."""

    name = "fedwsa"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.layer_names = resolve_wsa_layers(config.wsa_layers, model_parameters(config))
        self._target: tuple[Tensor, Tensor] | None = None    # next round's (mu*, sigma*) [L]
        self._initial: tuple[Tensor, Tensor] | None = None   # round 1's target (`fixed`)

    def summary(self) -> None:
        super().summary()
        cfg = self.config
        log(INFO, "\t├──> wsa: beta %g, fusion %s, %d layer(s), align-global %s", cfg.wsa_beta,
            cfg.wsa_fusion, len(self.layer_names), cfg.wsa_align_global)

    # --- target -----------------------------------------------------------------------------
    @property
    def target(self) -> tuple[Tensor, Tensor] | None:
        """The target the next ``configure_train`` sends, or None before round 1."""
        return self._target

    def _ensure_target(self) -> tuple[Tensor, Tensor]:
        """Round 1 (or a fresh strategy): the scope of the global model being sent."""
        if self._target is None:
            mu, sigma = model_scopes(
                {n: self._global[n].detach().cpu() for n in self.layer_names}, self.layer_names)
            self._target = (mu.clone(), sigma.clone())
            self._initial = (mu.clone(), sigma.clone())
        return self._target

    def client_settings(self, server_round: int) -> dict[str, object]:
        """The "wsa" ConfigRecord: {beta, names, mu, sigma} (METHODS.md 1.1)."""
        mu, sigma = self._ensure_target()
        return {
            "beta": float(self.config.wsa_beta),
            "names": list(self.layer_names),
            "mu": [float(v) for v in mu.tolist()],
            "sigma": [float(v) for v in sigma.tolist()],
        }

    # --- aggregation ------------------------------------------------------------------------
    def merge(self, server_round: int, global_params: dict[str, Tensor],
              updates: ClientUpdates) -> dict[str, Tensor]:
        """The weight aggregation before scope fusion: FedAvg's weighted average."""
        return weighted_average(updates.params, updates.weights)

    def aggregate(self, server_round: int, global_params: dict[str, Tensor],
                  updates: ClientUpdates) -> dict[str, Tensor]:
        """Merge, fuse the clients' scopes into the next target, optionally align the model."""
        new_global = self.merge(server_round, global_params, updates)
        names = self.layer_names
        self._ensure_target()
        rule = self.config.wsa_fusion
        mu_c, sigma_c = stacked_scopes({n: updates.params[n] for n in names}, names)
        global_scope = model_scopes(new_global, names) if rule == "global" else None
        mu_t, sigma_t = fuse_scopes(mu_c, sigma_c, updates.weights, rule,
                                    global_scope=global_scope, fixed_scope=self._initial)
        mu_t, sigma_t = mu_t.detach().cpu().clone(), sigma_t.detach().cpu().clone()
        self._target = (mu_t, sigma_t)
        if self.config.wsa_align_global:
            new_global = align_to_scope(new_global, names, mu_t, sigma_t)
        return new_global

    def metric_target(self, global_params: dict[str, Tensor]
                      ) -> tuple[list[str], Tensor, Tensor]:
        """``wsa-kl`` is measured against the target sent this round, over ``wsa-layers``.

        ``aggregate_train`` takes the round's metrics before ``aggregate`` replaces the target,
        so the current target is still the one sent."""
        mu, sigma = self._ensure_target()
        return list(self.layer_names), mu, sigma

    # --- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """The target and round 1's target as tensors, and the layer names they belong to."""
        state: dict[str, object] = {"names": list(self.layer_names)}
        if self._target is not None and self._initial is not None:
            state["target-mu"] = self._target[0].clone()
            state["target-sigma"] = self._target[1].clone()
            state["initial-mu"] = self._initial[0].clone()
            state["initial-sigma"] = self._initial[1].clone()
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore ``state_dict``'s output; the checkpoint must be for the same ``wsa-layers``."""
        names = list(state.get("names", []))  # type: ignore[call-overload]
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
