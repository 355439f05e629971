"""The cohort strategy: seeded client sampling, one Message per node, stacked replies, and the
composition of the algorithms' server parts (DESIGN.md, "Algorithms are parts, strategies are
compositions").

Every named strategy is this one class: ``fedwsa.algorithms.compose`` picks the parts (the
client terms' server pieces, the merge rule, the server optimiser) from ``strategy`` and
``server-opt``, and a round's new global model is ``after_merge(server_opt(merge(updates)))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedwsa.algorithms import ClientInputs, ClientUpdates, Composition, LinearMerge, compose
from fedwsa.algorithms.base import namespaced
from fedwsa.config import Config
from fedwsa.maths.scope import (
    model_scopes,
    regularised_names,
    scope_kl,
    sigma_spread,
)
from fedwsa.models import build_model
from fedwsa.protocol import (
    NodeAnswer,
    TrainReply,
    TrainRequest,
    from_arrays,
    pack_request,
    to_arrays,
    unpack_reply,
)


def model_parameters(config: Config) -> dict[str, torch.Tensor]:
    """``config.model``'s parameters on the meta device: names and shapes, no weights."""
    num_classes = 100 if config.dataset == "cifar100" else 10
    with torch.device("meta"):
        model = build_model(config.model, num_classes)
    return dict(model.named_parameters())


def sample_clients(seed: int, server_round: int, num_clients: int, fraction: float) -> list[int]:
    """``fraction`` of the clients, drawn without replacement, ascending.

    The generator is seeded from (seed, round) alone, so resuming at any round draws the same
    clients as the uninterrupted run, and the draw never depends on the number of nodes.
    """
    k = max(1, math.floor(fraction * num_clients + 1e-9))
    rng = np.random.default_rng([seed, server_round, 0x5A3])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def split_over_nodes(client_ids: list[int], node_ids: list[int]) -> dict[int, list[int]]:
    """Contiguous, near-equal slices of the cohort, one per node (nodes with none are skipped)."""
    chunks = np.array_split(np.asarray(client_ids, dtype=np.int64), len(node_ids))
    return {n: [int(c) for c in chunk] for n, chunk in zip(node_ids, chunks, strict=True)
            if len(chunk)}


class CohortStrategy(Strategy):
    """fedwsa's strategy: a Flower ``Strategy`` speaking the cohort protocol, composed of the
    algorithms' server parts."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.strategy
        self.min_clients = config.min_clients
        self.composition = compose(config, model_parameters(config))
        self.node_sums = self.sums_on_nodes(config, self.composition)
        self._sent: dict[int, list[int]] = {}
        self._global: dict[str, torch.Tensor] = {}
        # The last round's merged client updates (the stack that was aggregated), for the
        # server to keep on request (``save-client-models``).
        self.last_updates: ClientUpdates | None = None

    @staticmethod
    def sums_on_nodes(config: Config, composition: Composition) -> bool:
        """May the nodes send their clients' weighted sum instead of their weights? When
        ``node-aggregate`` is on, the merge is linear, no part reads the clients' own weights
        and no client model is to be kept."""
        return (config.node_aggregate and isinstance(composition.merge, LinearMerge)
                and not any(p.needs_client_weights for p in composition.all_parts())
                and config.save_client_models == "none")

    def part(self, name: str) -> Any:
        """The server part called ``name`` (e.g. ``"wsa"``, ``"cart"``, ``"adam"``)."""
        for p in self.composition.all_parts():
            if p.name == name:
                return p
        raise KeyError(f"strategy {self.name!r} has no part {name!r}")

    def client_inputs(self, server_round: int, global_params: dict[str, torch.Tensor],
                      client_ids: list[int]) -> ClientInputs:
        """The round's inputs of every client term, namespaced by part, for ``client_ids``."""
        inputs = ClientInputs()
        for p in self.composition.parts:
            got = p.client_inputs(server_round, global_params, client_ids)
            inputs = inputs.merged(ClientInputs(namespaced(p.name, got.shared),
                                                namespaced(p.name, got.per_client)))
        return inputs

    def aggregate(self, server_round: int, global_params: dict[str, torch.Tensor],
                  updates: ClientUpdates) -> dict[str, torch.Tensor]:
        """after_merge(server_opt(merge(updates))): the next global model."""
        c = self.composition
        new_global = c.merge.merge(server_round, global_params, updates)
        if c.optimizer is not None:
            new_global = c.optimizer.step(server_round, global_params, new_global)
        for p in c.parts:
            new_global = p.after_merge(server_round, global_params, new_global, updates)
        return new_global

    def round_metrics(self, server_round: int, global_params: dict[str, torch.Tensor],
                      updates: ClientUpdates) -> dict[str, float]:
        """Scope metrics of the clients' weights at the end of local training (METHODS.md 1).

        - ``wsa-kl``: unweighted mean over the round's successful clients of
          sum_l KL(client scope_l || target_l), over the target's layers. The target is
          ``metric_target``: for strategies without a WSA target, the scope of the global model
          sent this round (every regularised layer), so the number says how far local training
          moved the scopes; FedWSA measures against the target it sent.
        - ``scope-sigma-spread``: ``scope.sigma_spread`` of the clients' sigmas over every
          regularised layer (mean over layers of the population std over clients), the same
          layers for every strategy so runs compare.
        """
        names, mu_t, sigma_t = self.metric_target(global_params)
        all_names = regularised_names(global_params)
        # One pass over the clients' weights for both metrics (the target's layers are among
        # the regularised ones; a layer outside them gets its own pass).
        scoped = all_names + [n for n in names if n not in all_names]
        mu_all, sigma_all = updates.client_scopes(scoped)
        rows = torch.tensor([scoped.index(n) for n in names], dtype=torch.long,
                            device=mu_all.device)
        mu, sigma = mu_all[:, rows], sigma_all[:, rows]
        # The target (kept on the CPU) comes to the clients' scopes, in float64.
        kl = scope_kl(mu.double(), sigma.double(), mu_t.to(mu.device, torch.float64),
                      sigma_t.to(mu.device, torch.float64)).sum(dim=1)
        spread = sigma_spread(sigma_all[:, :len(all_names)])
        return {"wsa-kl": float(kl.mean()), "scope-sigma-spread": spread}

    def metric_target(self, global_params: dict[str, torch.Tensor]
                      ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Layer names and target scope ``wsa-kl`` is measured against: a part's (WSA's sent
        target), else the sent global model's over every regularised layer."""
        for p in self.composition.parts:
            target = p.metric_target(global_params)
            if target is not None:
                return target
        names = regularised_names(global_params)
        mu, sigma = model_scopes(global_params, names)
        return names, mu, sigma

    def state_dict(self) -> dict[str, object]:
        """Each part's checkpoint state, by part name (WSA target, optimiser moments, ...)."""
        return {p.name: p.state_dict() for p in self.composition.all_parts() if p.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what ``state_dict`` returned; a part absent there starts fresh."""
        names = {p.name for p in self.composition.all_parts()}
        if unknown := sorted(set(state) - names):
            raise ValueError(f"checkpointed strategy state for {unknown}, which strategy "
                             f"{self.name!r} does not have (parts: {sorted(names)})")
        for p in self.composition.all_parts():
            p.load_state_dict(dict(state.get(p.name, {})))  # type: ignore[call-overload]

    def preflight(self, state: dict[str, object] | None) -> None:
        """Every part checks, writing nothing, that it can start (``state`` None) or resume
        from the checkpointed ``state``."""
        for p in self.composition.all_parts():
            p.preflight(None if state is None else dict(state.get(p.name, {})))  # type: ignore[call-overload]

    def committed(self) -> None:
        """The last ``state_dict()`` is safely in a checkpoint."""
        for p in self.composition.all_parts():
            p.committed()

    # --- Flower Strategy ------------------------------------------------------------------
    def summary(self) -> None:
        cfg = self.config
        log(INFO, "\t├──> %s: %d clients, fraction-train %.2f, seed %d", self.name,
            cfg.num_clients, cfg.fraction_train, cfg.seed)
        for p in self.composition.all_parts():
            log(INFO, "\t├──> %s", p.describe())

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        cfg = self.config
        cohort = sample_clients(cfg.seed, server_round, cfg.num_clients, cfg.fraction_train)
        nodes = sorted(grid.get_node_ids())
        self._sent = split_over_nodes(cohort, nodes)
        self._global = from_arrays(arrays)
        inputs = self.client_inputs(server_round, self._global, cohort)
        position = {c: i for i, c in enumerate(cohort)}
        messages = []
        for node_id, clients in self._sent.items():
            rows = inputs.rows([position[c] for c in clients])
            request = TrainRequest(server_round, clients, cfg.to_json(), self._global,
                                   rows.shared, rows.per_client, reduce=self.node_sums)
            messages.append(Message(content=pack_request(request), message_type=MessageType.TRAIN,
                                    dst_node_id=node_id))
        log(INFO, "round %d: %d clients over %d node(s)", server_round, len(cohort),
            len(messages))
        return messages

    def collect(self, answers: Iterable[NodeAnswer]) -> ClientUpdates:
        """Unpack node answers into one id-sorted stack; set aside failed and non-finite
        clients.

        Sorting by client id makes the aggregate independent of how clients were spread over
        nodes (same sums in the same order).
        """
        failures: dict[int, str] = {}
        replies: list[TrainReply] = []
        stats: dict[str, list[float]] = {}
        answered: set[int] = set()
        for answer in answers:
            node = answer.node_id
            answered.add(node)
            if answer.content is None:
                for cid in self._sent.get(node, []):
                    failures[cid] = f"node {node} failed: {answer.error}"
                continue
            reply = self.summed_if_asked(unpack_reply(answer.content).finite_only())
            failures.update(reply.failures)
            for key, value in reply.stats.items():
                stats.setdefault(key, []).append(value)
            replies.append(reply)
        for node, clients in self._sent.items():
            if node not in answered:
                for cid in clients:
                    failures[cid] = f"node {node} did not answer"
        merged = TrainReply.merged(replies, self._global, failures)
        for cid, reason in sorted(merged.failures.items()):
            log(WARNING, "client %d left out of aggregation: %s", cid, reason)
        return ClientUpdates(
            client_ids=merged.client_ids,
            params=merged.params,
            num_examples=torch.tensor(merged.num_examples, dtype=torch.int64),
            train_loss=merged.train_loss,
            steps=torch.tensor(merged.steps, dtype=torch.int64),
            outputs=merged.outputs,
            failures=merged.failures,
            stats={k: float(np.mean(v)) for k, v in stats.items()},
            sums=merged.sums,
            scopes=merged.scopes,
        )

    def summed_if_asked(self, reply: TrainReply) -> TrainReply:
        """A node's finite clients, summed here if the node was asked to sum them and sent
        their weights instead (it could not, e.g. out of device memory): every reply of a
        round then has the same form. The merge's own checks apply (``coefficients``)."""
        merge = self.composition.merge
        if (not self.node_sums or reply.sums is not None or not reply.client_ids
                or not isinstance(merge, LinearMerge)):
            return reply
        return reply.summed_with(merge)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.aggregate_answers(server_round, [
            NodeAnswer(m.metadata.src_node_id, None if m.has_error() else m.content,
                       m.error.reason if m.has_error() else None) for m in replies])

    def aggregate_answers(self, server_round: int, answers: Iterable[NodeAnswer]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``aggregate_train`` on the nodes' answers for this run (unbundled by the server)."""
        updates = self.last_updates = self.collect(answers)
        metrics: dict[str, float] = {
            "clients-sampled": len(updates.client_ids) + len(updates.failures),
            "clients-failed": len(updates.failures),
        }
        metrics.update({f"node-{k}": v for k, v in updates.stats.items()})
        if len(updates.client_ids) < max(1, self.min_clients):
            log(WARNING, "round %d: only %d client(s) succeeded (min-clients=%d); keeping the "
                "previous global model", server_round, len(updates.client_ids), self.min_clients)
            metrics["global-updated"] = 0
            return None, MetricRecord(metrics)
        metrics["global-updated"] = 1
        metrics["train-loss"] = float(np.mean(updates.train_loss))
        # Metrics first: they compare the clients with what was sent (FedWSA's target).
        metrics.update(self.round_metrics(server_round, self._global, updates))
        new_global = self.aggregate(server_round, self._global, updates)
        return to_arrays(new_global), MetricRecord(metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """fedwsa evaluates centrally on the server; no federated evaluation round."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return None
