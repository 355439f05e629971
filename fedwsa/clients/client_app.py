"""The Flower ``ClientApp``: one call trains a node's whole cohort and answers with one Message."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedwsa.algorithms.base import ClientInputs
from fedwsa.clients.failures import train_cohort
from fedwsa.clients.node import node_data
from fedwsa.clients.trainer import CohortTask
from fedwsa.clients.trainers import build_trainer
from fedwsa.config import Config
from fedwsa.protocol import pack_reply, unpack_request

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the clients listed in ``msg`` from its global model; reply with their weights."""
    request = unpack_request(msg.content)
    config = Config.from_json(request.run_config)
    data = node_data(config)
    trainer = build_trainer(config, data)
    task = CohortTask(request.server_round, request.client_ids, request.global_params,
                      ClientInputs(request.shared, request.per_client))
    result = train_cohort(trainer, task, seed=config.seed, fail_rate=config.fail_rate)
    return Message(content=pack_reply(result), reply_to=msg)
