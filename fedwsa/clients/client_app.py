"""The Flower ``ClientApp``: one call trains a node's whole cohort and answers with one Message.

The Message is a bundle of one request per run the federation serves (one for ``fedwsa run``,
one per stacked cell for ``fedwsa compare``); each run is trained with its own config (runs
that train alike in one batched call) and answered under its own tag. A run whose request
cannot be trained at all (its config, its data) is answered with an error for that run only:
the other runs of the bundle go on.
"""

from __future__ import annotations

import logging
from logging import INFO

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log as flwr_log

from fedwsa.algorithms import linear_merge
from fedwsa.algorithms.base import ClientInputs
from fedwsa.clients.failures import reason, train_cohort
from fedwsa.clients.fused import FuseKey, fuse_key, fused_groups, train_fused
from fedwsa.clients.node import node_data
from fedwsa.clients.node_config import node_overrides
from fedwsa.clients.trainer import CohortTask
from fedwsa.clients.trainers import build_trainer
from fedwsa.config import Config
from fedwsa.protocol import (
    TrainReply,
    TrainRequest,
    bundle,
    error_content,
    pack_reply,
    unbundle,
    unpack_request,
)

app = ClientApp()
log = logging.getLogger(__name__)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the clients of every run in ``msg``; reply with their weights, run by run.

    Runs whose clients train alike go through the batched trainer together
    (``fedwsa.clients.fused``); if such a joint call fails, it is split in halves until the
    failure is with the run that causes it (``_train_together``).

    A SuperNode's ``--node-config`` sets this node's ``data-root`` and ``device`` for every
    run (``fedwsa.clients.node_config``); a bad one fails the node's whole reply, naming the
    key."""
    node = node_overrides(context.node_config)
    if node:
        flwr_log(INFO, "[fedwsa] node config: %s", " ".join(f"{k}={v!r}" for k, v in node.items()))
    parts = unbundle(msg.content)
    replies: dict[str, RecordDict] = {}
    runs: dict[str, tuple[TrainRequest, Config]] = {}
    for tag, content in parts.items():
        try:
            request = unpack_request(content)
            runs[tag] = (request, Config.from_json(request.run_config).replace(**node))
        except Exception as err:  # this run's failure, not the other runs'
            replies[tag] = _failed(tag, err)
    tags = list(runs)
    for group in fused_groups([_fuse_key(*runs[t]) for t in tags]):
        _train_together([tags[i] for i in group], runs, replies)
    return Message(content=bundle({tag: replies[tag] for tag in parts}), reply_to=msg)


def _train_together(tags: list[str], runs: dict[str, tuple[TrainRequest, Config]],
                    replies: dict[str, RecordDict]) -> None:
    """Train the runs ``tags`` in one joint call and put each one's reply in ``replies``. If
    the call fails, each half is grouped again (``fused_groups``: a half may need another
    order of terms than the whole) and tried as its own joint calls, down to single runs
    trained with their own trainer: the failure finds its run, and the other runs still train
    together (in a few more calls) instead of one by one."""
    if len(tags) > 1:
        try:
            trained = train_fused([runs[t] for t in tags])
        except Exception as err:
            log.warning("%d runs trained together failed (%s); trying each half on its own",
                        len(tags), reason(err))
            middle = len(tags) // 2
            for half in (tags[:middle], tags[middle:]):
                for group in fused_groups([_fuse_key(*runs[t]) for t in half]):
                    _train_together([half[i] for i in group], runs, replies)
            return
        for tag, reply in zip(tags, trained, strict=True):
            try:  # each run's own answer: its failure is not the others'
                replies[tag] = pack_reply(answer(*runs[tag], reply))
            except Exception as err:
                replies[tag] = _failed(tag, err)
        return
    (tag,) = tags
    try:
        replies[tag] = pack_reply(answer(*runs[tag], train_run(*runs[tag])))
    except Exception as err:
        replies[tag] = _failed(tag, err)


def _fuse_key(request: TrainRequest, config: Config) -> FuseKey | None:
    """``fuse_key``, or None (train alone) when it cannot be made: that run's problem then
    shows when it trains, as its own error."""
    try:
        return fuse_key(config, request)
    except Exception:  # the run's own training reports what is wrong with it
        return None


def _failed(tag: str, err: Exception) -> RecordDict:
    log.warning("run %s could not be trained on this node: %s", tag, reason(err))
    return error_content(reason(err))


def answer(request: TrainRequest, config: Config, reply: TrainReply) -> TrainReply:
    """What goes back for one run: the clients' weights, or, when the request asks for it
    (``node-aggregate``), their sum with the coefficients of the run's linear merge, made
    here on the node's device."""
    if not request.reduce or not reply.client_ids:
        return reply
    merge = linear_merge(config)
    if merge is None:
        raise ValueError(f"the server asked for summed weights, but strategy "
                         f"{config.strategy!r} does not merge linearly")
    try:
        return reply.summed_with(merge)
    except Exception as err:  # e.g. out of memory: the server sums them, or says why not
        log.warning("could not sum the clients' weights on this node (%s); sending them all",
                    reason(err))
        return reply


def train_run(request: TrainRequest, config: Config) -> TrainReply:
    """One run's clients, with the run's own trainer."""
    data = node_data(config)
    trainer = build_trainer(config, data)
    task = CohortTask(request.server_round, request.client_ids, request.global_params,
                      ClientInputs(request.shared, request.per_client))
    return train_cohort(trainer, task, seed=config.seed, fail_rate=config.fail_rate)
