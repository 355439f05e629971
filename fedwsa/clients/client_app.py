"""The Flower ``ClientApp``: one call trains a node's whole cohort and answers with one Message.

The Message is a bundle of one request per run the federation serves (one for ``fedwsa run``,
one per stacked cell for ``fedwsa compare``); each run is trained with its own config and
answered under its own tag. A run whose request cannot be trained at all (its config, its
data) is answered with an error for that run only: the other runs of the bundle go on.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedwsa.algorithms.base import ClientInputs
from fedwsa.clients.failures import reason, train_cohort
from fedwsa.clients.node import node_data
from fedwsa.clients.trainer import CohortTask
from fedwsa.clients.trainers import build_trainer
from fedwsa.config import Config
from fedwsa.protocol import bundle, error_content, pack_reply, unbundle, unpack_request

app = ClientApp()
log = logging.getLogger(__name__)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the clients of every run in ``msg``; reply with their weights, run by run."""
    replies: dict[str, RecordDict] = {}
    for tag, content in unbundle(msg.content).items():
        try:
            replies[tag] = train_run(content)
        except Exception as err:  # this run's failure, not the other runs'
            log.warning("run %s could not be trained on this node: %s", tag, reason(err))
            replies[tag] = error_content(reason(err))
    return Message(content=bundle(replies), reply_to=msg)


def train_run(content: RecordDict) -> RecordDict:
    """One run's request -> its reply content."""
    request = unpack_request(content)
    config = Config.from_json(request.run_config)
    data = node_data(config)
    trainer = build_trainer(config, data)
    task = CohortTask(request.server_round, request.client_ids, request.global_params,
                      ClientInputs(request.shared, request.per_client))
    result = train_cohort(trainer, task, seed=config.seed, fail_rate=config.fail_rate)
    return pack_reply(result)
