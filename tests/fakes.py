"""Stand-ins for the two ends of a round, for strategy tests: a Grid and nodes' replies."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from flwr.app import Message

from fedwsa.protocol import TrainReply, pack_reply, unpack_request


class FakeGrid:
    """Only what a strategy asks of a Grid when configuring a round: the node ids."""

    def __init__(self, node_ids: Iterable[int] = (1, 2)) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def fake_replies(messages: Iterable[Message], sizes: dict[int, int],
                 weights_of: Callable[[int], dict[str, torch.Tensor]]
                 ) -> tuple[list[Message], dict[int, dict[str, torch.Tensor]]]:
    """Answer each train Message as a node would: client c's weights are ``weights_of(c)``,
    its example count ``sizes[c]``, its train loss 0.5. Returns the replies and the weights."""
    replies, weights = [], {}
    for msg in messages:
        ids = unpack_request(msg.content).client_ids
        for cid in ids:
            weights[cid] = weights_of(cid)
        stacked = {k: torch.stack([weights[c][k] for c in ids]) for k in weights[ids[0]]}
        reply = TrainReply(ids, stacked, [sizes[c] for c in ids], [0.5] * len(ids))
        replies.append(Message(pack_reply(reply), reply_to=msg))
    return replies, weights


def train_reply(msg: Message) -> Message:
    """The ClientApp's answer to a strategy's (unbundled) train Message for one run."""
    from fedwsa.clients.client_app import train_run
    from fedwsa.config import Config

    request = unpack_request(msg.content)
    reply = train_run(request, Config.from_json(request.run_config))
    return Message(pack_reply(reply), reply_to=msg)
