"""Pick the trainer a run asks for."""

from __future__ import annotations

from fedwsa.algorithms import client_terms
from fedwsa.clients.batched import BatchedTrainer
from fedwsa.clients.node import NodeData
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import LocalSettings, Trainer
from fedwsa.config import Config
from fedwsa.models import build_model, check_functional


def build_trainer(config: Config, data: NodeData) -> Trainer:
    """The ``trainer`` of ``config``, over the node's data."""
    model = build_model(config.model, data.num_classes)
    check_functional(model)
    settings = LocalSettings.from_config(config)
    terms = client_terms(config, dict(model.named_parameters()))
    if config.trainer == "batched":
        return BatchedTrainer(model, data, settings, config.max_batched_clients, config.precision,
                              terms=terms)
    return SequentialTrainer(model, data, settings, terms)
