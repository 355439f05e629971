"""``fedwsa.server.inprocess.InProcessGrid`` with test-only faults: a crash mid-round,
failing nodes.

It lets tests drive ``run_federation`` (the real round loop, run directory and checkpoints) in
the test process, in seconds instead of a Ray start per run. Tests that need the real engine
(a killed ``fedwsa run``, determinism through ``simulate``) use that instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Error, Message

from fedwsa.protocol import unbundle, unpack_request
from fedwsa.server.inprocess import InProcessGrid


class Crash(Exception):
    """Stands in for a process dying in the middle of a round."""


class LocalGrid(InProcessGrid):
    """Nodes ``node_ids``; each train Message is answered by the ClientApp's train handler.

    ``crash_at`` raises ``Crash`` when that round's Messages are sent (the round never ends);
    ``failing_nodes`` answer with a Flower error Message instead of training.
    """

    def __init__(self, node_ids: Iterable[int] = (1,), crash_at: int | None = None,
                 failing_nodes: Iterable[int] = (),
                 on_round: Callable[[int], None] | None = None) -> None:
        ids = list(node_ids)
        super().__init__(len(ids), node_ids=ids)
        self.crash_at = crash_at
        self.failing_nodes = set(failing_nodes)
        self.rounds: list[int] = []
        self.on_round = on_round

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None
                         ) -> list[Message]:
        messages = list(messages)
        first = next(iter(unbundle(messages[0].content).values()))
        server_round = unpack_request(first).server_round
        self.rounds.append(server_round)
        if self.on_round is not None:
            self.on_round(server_round)
        if server_round == self.crash_at:
            raise Crash(f"killed during round {server_round}")
        return [Message(Error(code=1, reason="node crashed"), reply_to=msg)
                if msg.metadata.dst_node_id in self.failing_nodes else self.answer(msg)
                for msg in messages]
