"""FedAvg and the cohort protocol on the server side, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import FakeGrid, fake_replies
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedwsa.config import make_config
from fedwsa.protocol import from_arrays, pack_reply, to_arrays, unpack_request
from fedwsa.strategies import CohortStrategy, sample_clients
from fedwsa.strategies.cohort import split_over_nodes


def random_params(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
            "fc.weight": torch.randn(5, 7, generator=gen), "fc.bias": torch.randn(5, generator=gen)}


def client_replies(messages: list[Message], sizes: dict[int, int], seed: int = 0
                   ) -> tuple[list[Message], dict[int, dict[str, torch.Tensor]]]:
    """Made-up client weights, seeded per (seed, client)."""
    return fake_replies(messages, sizes,
                        lambda c: random_params(torch.Generator().manual_seed(seed * 1000 + c)))


@pytest.fixture
def strategy(flower_identity: None) -> CohortStrategy:
    return CohortStrategy(make_config({"num-clients": 10, "fraction-train": 0.6, "seed": 3}))


def run_round(strategy: CohortStrategy, nodes: list[int], sizes: dict[int, int]):
    global_params = random_params(torch.Generator().manual_seed(99))
    messages = list(strategy.configure_train(1, to_arrays(global_params), None, FakeGrid(nodes)))
    replies, weights = client_replies(messages, sizes)
    arrays, metrics = strategy.aggregate_train(1, replies)
    return messages, from_arrays(arrays), metrics, weights


SIZES = {c: 10 + 7 * c for c in range(10)}


def test_fedavg_matches_numpy_weighted_average(strategy: CohortStrategy) -> None:
    _, new_global, metrics, weights = run_round(strategy, [11, 12], SIZES)
    ids = sorted(weights)
    n = np.array([SIZES[c] for c in ids], dtype=np.float64)
    for name, value in new_global.items():
        expected = sum(n[i] * weights[c][name].double().numpy() for i, c in enumerate(ids))
        np.testing.assert_allclose(value.numpy(), expected / n.sum(), rtol=1e-5, atol=1e-6)
    assert metrics["clients-sampled"] == 6 and metrics["clients-failed"] == 0


def test_fedavg_matches_flowers_fedavg_aggregation(strategy: CohortStrategy) -> None:
    _, new_global, _, weights = run_round(strategy, [11, 12, 13], SIZES)
    contents = [RecordDict({"arrays": ArrayRecord(weights[c]),
                            "metrics": MetricRecord({"num-examples": SIZES[c]})})
                for c in sorted(weights)]
    flower = aggregate_arrayrecords(contents, "num-examples").to_torch_state_dict()
    for name, value in new_global.items():
        torch.testing.assert_close(value, flower[name], rtol=1e-5, atol=1e-6)


def test_one_message_per_node_listing_its_clients(strategy: CohortStrategy) -> None:
    messages, *_ = run_round(strategy, [5, 6, 7], SIZES)
    assert [m.metadata.dst_node_id for m in messages] == [5, 6, 7]
    listed = [unpack_request(m.content).client_ids for m in messages]
    assert sorted(sum(listed, [])) == sample_clients(3, 1, 10, 0.6)
    assert all(m.metadata.message_type == MessageType.TRAIN for m in messages)


def test_node_layout_does_not_change_the_global_model(flower_identity: None) -> None:
    config = make_config({"num-clients": 10, "fraction-train": 0.6, "seed": 3})
    one = run_round(CohortStrategy(config), [1], SIZES)[1]
    many = run_round(CohortStrategy(config), [1, 2, 3, 4, 5, 6], SIZES)[1]
    for name in one:
        assert torch.equal(one[name], many[name])


def test_sampling_is_seeded_and_fraction_sized() -> None:
    a = sample_clients(1, 4, 100, 0.1)
    assert a == sample_clients(1, 4, 100, 0.1) and len(a) == 10 and a == sorted(set(a))
    assert a != sample_clients(2, 4, 100, 0.1) and a != sample_clients(1, 5, 100, 0.1)


def test_split_over_nodes_covers_the_cohort_once() -> None:
    split = split_over_nodes(list(range(7)), [10, 20, 30])
    assert sum(split.values(), []) == list(range(7))
    assert split_over_nodes([1, 2], [10, 20, 30]) == {10: [1], 20: [2]}


def test_failed_node_and_non_finite_client_are_left_out(strategy: CohortStrategy) -> None:
    from flwr.app import Error

    global_params = random_params(torch.Generator().manual_seed(0))
    messages = list(strategy.configure_train(1, to_arrays(global_params), None, FakeGrid([1, 2])))
    replies, weights = client_replies(messages[:1], SIZES)
    bad = unpack_request(messages[0].content).client_ids[0]
    reply = unpack_reply_first(replies[0])
    reply.params["fc.bias"][0, 0] = float("nan")
    replies = [Message(pack_reply(reply), reply_to=messages[0]),
               Message(Error(code=0, reason="out of memory"), reply_to=messages[1])]
    arrays, metrics = strategy.aggregate_train(1, replies)
    ok = [c for c in unpack_request(messages[0].content).client_ids if c != bad]
    failed = unpack_request(messages[1].content).client_ids
    assert metrics["clients-failed"] == 1 + len(failed)
    n = torch.tensor([SIZES[c] for c in ok], dtype=torch.float64)
    expected = sum(n[i] * weights[c]["fc.weight"].double() for i, c in enumerate(ok)) / n.sum()
    torch.testing.assert_close(from_arrays(arrays)["fc.weight"].double(), expected)


def unpack_reply_first(msg: Message):
    from fedwsa.protocol import unpack_reply

    return unpack_reply(msg.content)
