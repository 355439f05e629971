"""Run a federation in this process without Flower's simulation engine (sweeps, tests).

The server side (``run_federation`` and the strategies) and the node side (the ClientApp's
train handler) are the code ``flwr run`` executes; only the transport differs: a direct call
instead of Ray actors and the SuperLink. Same config, same seed: same numbers as
``fedwsa.cli.simulate``, without the engine's start-up cost per run, which dominates short
runs on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedwsa.config import Config

FIRST_NODE_ID = 1001
"""Node ids are FIRST_NODE_ID, FIRST_NODE_ID + 1, ... (clear of the SuperLink's id)."""


class InProcessGrid:
    """A Flower ``Grid`` stand-in whose nodes are direct calls to the ClientApp train handler.

    A node whose handler raises answers with an error Message, as a SuperNode would, so the
    strategy's failure handling runs unchanged.
    """

    def __init__(self, num_nodes: int = 1, node_ids: Iterable[int] | None = None) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes={num_nodes} invalid: need at least 1 node")
        self.node_ids = (list(node_ids) if node_ids is not None
                         else list(range(FIRST_NODE_ID, FIRST_NODE_ID + num_nodes)))
        self._replies: dict[str, Message] = {}
        self._contexts = {n: Context(run_id=0, node_id=n, node_config={}, state=RecordDict(),
                                     run_config={}) for n in self.node_ids}

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Give each message an id (as Flower's grids do) and have its node answer it now."""
        messages = list(messages)
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
        for reply in self.send_and_receive(messages):
            self._replies[reply.metadata.reply_to_message_id] = reply
        return [msg.metadata.message_id for msg in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to ``message_ids`` that have not been pulled yet."""
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        """Each message's node handles it in turn; replies come back in the same order."""
        return [self.answer(msg) for msg in messages]

    def answer(self, msg: Message) -> Message:
        """The node's reply to one train Message (an error Message if its handler raises)."""
        from fedwsa.clients.client_app import train

        try:
            return train(msg, self._contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # a node failure, not ours: report it as Flower would
            reason = f"{type(exc).__name__}: {exc}"
            return Message(Error(code=0, reason=reason), reply_to=msg)


@contextmanager
def server_identity() -> Iterator[None]:
    """Messages need a run/task identity, which Flower sets in a real run; restore it after."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 0, 1, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def run_in_process(config: Config, num_nodes: int = 1) -> Path:
    """``run_federation`` over an :class:`InProcessGrid`; returns the run directory."""
    from fedwsa.results.rundir import default_run_dir
    from fedwsa.server.app import run_federation

    if not config.run_dir:
        config = config.replace(run_dir=str(default_run_dir(config)))
    with server_identity():
        return run_federation(InProcessGrid(num_nodes), config)


def run_cells_in_process(configs: list[Config], num_nodes: int = 1) -> dict[str, str | None]:
    """``run_configs`` (several runs as one federation) over an :class:`InProcessGrid`."""
    from fedwsa.server.app import run_configs

    with server_identity():
        return run_configs(InProcessGrid(num_nodes), configs)
