"""A Flower Grid without Flower's engine: train Messages go straight to fedwsa's ClientApp code.

It lets tests drive ``run_federation`` (the real round loop, run directory and checkpoints) in
the test process, in seconds instead of a Ray start per run. Tests that need the real engine
(a killed ``fedwsa run``, determinism through ``simulate``) use it instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Error, Message

from fedwsa.clients.client_app import train


class Crash(Exception):
    """Stands in for a process dying in the middle of a round."""


class LocalGrid:
    """Nodes ``node_ids``; each train Message is answered by ``fedwsa.clients.client_app.train``.

    ``crash_at`` raises ``Crash`` when that round's Messages are sent (the round never ends);
    ``failing_nodes`` answer with a Flower error Message instead of training.
    """

    def __init__(self, node_ids: Iterable[int] = (1,), crash_at: int | None = None,
                 failing_nodes: Iterable[int] = (),
                 on_round: Callable[[int], None] | None = None) -> None:
        self.node_ids = list(node_ids)
        self.crash_at = crash_at
        self.failing_nodes = set(failing_nodes)
        self.rounds: list[int] = []
        self.on_round = on_round

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None
                         ) -> list[Message]:
        from fedwsa.protocol import unpack_request

        messages = list(messages)
        server_round = unpack_request(messages[0].content).server_round
        self.rounds.append(server_round)
        if self.on_round is not None:
            self.on_round(server_round)
        if server_round == self.crash_at:
            raise Crash(f"killed during round {server_round}")
        replies = []
        for msg in messages:
            if msg.metadata.dst_node_id in self.failing_nodes:
                replies.append(Message(Error(code=1, reason="node crashed"), reply_to=msg))
            else:
                replies.append(train(msg, None))  # type: ignore[arg-type]  # context unused
        return replies
