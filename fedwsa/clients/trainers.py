"""Pick the trainer a run asks for."""

from __future__ import annotations

from dataclasses import replace

from fedwsa.algorithms import ClientTerm, client_terms
from fedwsa.clients.batched import BatchedTrainer
from fedwsa.clients.node import NodeData
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import LocalSettings, Trainer
from fedwsa.config import Config
from fedwsa.models import build_model, check_functional


def build_trainer(config: Config, data: NodeData,
                  client_epochs: tuple[int, ...] | None = None,
                  terms: list[ClientTerm] | None = None) -> Trainer:
    """The ``trainer`` of ``config``, over the node's data (``client_epochs``: each client's
    own local epochs, by client id; see ``LocalSettings``; ``terms``: the client terms, by
    default those of ``config``'s strategy)."""
    model = build_model(config.model, data.num_classes)
    check_functional(model)
    settings = replace(LocalSettings.from_config(config), client_epochs=client_epochs)
    if terms is None:
        terms = client_terms(config, dict(model.named_parameters()))
    if config.trainer == "batched":
        return BatchedTrainer(model, data, settings, config.max_batched_clients, config.precision,
                              terms=terms, conv_impl=config.conv_impl)
    return SequentialTrainer(model, data, settings, terms)
