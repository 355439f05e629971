"""``server_app.exchange``: push a round's Messages, pull every reply, polling quickly."""

from __future__ import annotations

import itertools

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedwsa.server import app as server_app
from fedwsa.server.app import exchange


class SlowGrid:
    """A grid whose node ``i`` has answered after ``delays[i]`` pulls; records each pull."""

    def __init__(self, delays: list[int]) -> None:
        self.delays = delays
        self.pulls = 0
        self.asked: list[set[str]] = []
        self.messages: list[Message] = []

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        self.messages = list(messages)
        for i, msg in enumerate(self.messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
        return [m.metadata.message_id for m in self.messages]

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        ids = set(message_ids)
        self.asked.append(ids)
        self.pulls += 1
        return [Message(RecordDict({"r": ConfigRecord({"node": i})}), reply_to=msg)
                for i, msg in enumerate(self.messages)
                if self.delays[i] == self.pulls and msg.metadata.message_id in ids]


def messages(n: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=10 + i, message_type="train") for i in range(n)]


def test_every_reply_comes_back_once_and_only_pending_ones_are_asked_for(
        flower_identity: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(server_app.time, "sleep", sleeps.append)
    grid = SlowGrid(delays=[3, 1, 30])
    replies = exchange(grid, messages(3), max_poll_s=0.05)  # type: ignore[arg-type]
    assert sorted(r.content.config_records["r"]["node"] for r in replies) == [0, 1, 2]
    assert grid.pulls == 30
    assert grid.asked[0] == {"m0", "m1", "m2"}
    assert grid.asked[1] == {"m0", "m2"} and grid.asked[-1] == {"m2"}
    # The wait between pulls starts at 1 ms and grows by half up to the cap.
    assert sleeps[0] == pytest.approx(0.001)
    assert all(b == pytest.approx(min(1.5 * a, 0.05)) for a, b in itertools.pairwise(sleeps))
    assert max(sleeps) == pytest.approx(0.05) and len(sleeps) == 29


def test_replies_already_there_need_no_wait(flower_identity: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_app.time, "sleep", lambda s: pytest.fail("slept"))
    grid = SlowGrid(delays=[1, 1])
    assert len(exchange(grid, messages(2))) == 2  # type: ignore[arg-type]
