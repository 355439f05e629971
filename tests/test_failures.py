"""Failing clients and nodes: left out of aggregation, counted, logged; the run goes on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nodes
import numpy as np
import pytest
import torch
from fakes import FakeGrid
from flwr.app import Error, Message
from local_grid import LocalGrid

from fedwsa.cli import main
from fedwsa.clients.batched import BatchedTrainer, plan_chunks
from fedwsa.clients.failures import injected_fault, train_cohort
from fedwsa.clients.node import NodeData
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.config import make_config
from fedwsa.models import build_model
from fedwsa.protocol import TrainReply, from_arrays, pack_reply, to_arrays, unpack_reply
from fedwsa.server.app import run_federation
from fedwsa.strategies import CohortStrategy

SIZES = (30, 12, 41, 7, 25, 18)


def make_node(sizes: tuple[int, ...] = SIZES) -> NodeData:
    return nodes.make_node(sizes, seed=1)


SETTINGS = LocalSettings(local_epochs=1, batch_size=8, lr=0.05, momentum=0.9,
                         weight_decay=0.0, augment=False, seed=3)


def global_params() -> dict[str, torch.Tensor]:
    model = build_model("simple-cnn", 10, seed=0)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def trainer(kind: str, node: NodeData):
    model = build_model("simple-cnn", 10)
    return (SequentialTrainer(model, node, SETTINGS) if kind == "sequential"
            else BatchedTrainer(model, node, SETTINGS))


def assert_same_client(a, b, cid: int, exact: bool) -> None:
    i, j = a.client_ids.index(cid), b.client_ids.index(cid)
    for name in a.params:
        if exact:
            assert torch.equal(a.params[name][i], b.params[name][j])
        else:
            torch.testing.assert_close(a.params[name][i], b.params[name][j],
                                       rtol=1e-5, atol=1e-6)


# --- fault injection ----------------------------------------------------------------------------


def test_injected_faults_are_seeded_per_client_and_round_at_the_asked_rate() -> None:
    draws = np.array([[injected_fault(4, r, c, 0.3) for c in range(100)] for r in range(1, 41)])
    assert abs(draws.mean() - 0.3) < 0.03  # 4000 Bernoulli(0.3): std 0.007
    again = np.array([[injected_fault(4, r, c, 0.3) for c in range(100)] for r in range(1, 41)])
    assert (draws == again).all()
    assert (draws[0] != draws[1]).any()  # a new set of clients each round
    other_seed = np.array([[injected_fault(5, r, c, 0.3) for c in range(100)]
                           for r in range(1, 41)])
    assert (draws != other_seed).any()
    assert not any(injected_fault(4, r, c, 0.0) for r in range(1, 20) for c in range(50))


@pytest.mark.parametrize("kind", ["sequential", "batched"])
def test_an_injected_failure_leaves_out_that_client_only(kind: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    node = make_node()
    ids = list(range(len(SIZES)))
    rate, rnd = 0.4, 2
    chosen = [c for c in ids if injected_fault(SETTINGS.seed, rnd, c, rate)]
    assert 0 < len(chosen) < len(ids)  # this seed picks some clients, not all
    task = CohortTask(rnd, ids, global_params())
    with caplog.at_level(logging.WARNING):
        result = train_cohort(trainer(kind, node), task, seed=SETTINGS.seed, fail_rate=rate)
    healthy = [c for c in ids if c not in chosen]
    assert sorted(result.failures) == chosen and result.client_ids == healthy
    assert all("InjectedFault" in why for why in result.failures.values())
    assert all(f"client {c} failed" in caplog.text for c in chosen)
    clean = trainer(kind, node).train(CohortTask(rnd, healthy, global_params()))
    for cid in healthy:
        assert_same_client(result, clean, cid, exact=kind == "sequential")


def test_a_client_that_raises_inside_the_batched_trainer_is_isolated() -> None:
    """A corrupt partition makes the whole vmap'ed cohort raise; the node retries one by one."""
    node = make_node()
    bad = list(node.partitions)
    bad[2] = torch.tensor([10**9])  # an index far outside the train set
    broken = NodeData(node.device, node.images, node.labels, node.mean, node.std,
                      node.num_classes, tuple(bad))
    ids = [0, 1, 2, 3]
    result = train_cohort(trainer("batched", broken), CohortTask(1, ids, global_params()),
                          seed=SETTINGS.seed)
    assert result.client_ids == [0, 1, 3] and list(result.failures) == [2]
    assert "IndexError" in result.failures[2]
    reference = SequentialTrainer(build_model("simple-cnn", 10), node, SETTINGS).train(
        CohortTask(1, [0, 1, 3], global_params()))
    for cid in (0, 1, 3):
        assert_same_client(result, reference, cid, exact=False)


def test_out_of_memory_halves_the_chunks_once_and_for_later_rounds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A device that fits 2 clients at once (faked: the step raises torch's out-of-memory
    error above 2): the cohort of 6 is retried in chunks of 3, then 1, and gives every client's
    result of the unconstrained run; the next round starts at the size that fitted."""
    import fedwsa.clients.batched as batched

    node, ids = make_node(), list(range(6))
    want = BatchedTrainer(build_model("simple-cnn", 10), node, SETTINGS, cpu_workers=1).train(
        CohortTask(1, ids, global_params()))
    monkeypatch.setattr(batched, "LEARNED_CHUNK", {})
    real, sizes = BatchedTrainer._train_chunk, []

    def small_device(self, inputs, layout, grad_fn):  # type: ignore[no-untyped-def]
        sizes.append(len(layout.client_ids))
        if len(layout.client_ids) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (faked)")
        return real(self, inputs, layout, grad_fn)

    monkeypatch.setattr(BatchedTrainer, "_train_chunk", small_device)
    fitted = BatchedTrainer(build_model("simple-cnn", 10), node, SETTINGS, cpu_workers=1)
    got = fitted.train(CohortTask(1, ids, global_params()))
    assert sizes == [6, 3] + [1] * 6
    assert got.client_ids == want.client_ids
    for cid in ids:
        assert_same_client(got, want, cid, exact=True)
    sizes.clear()
    again = BatchedTrainer(build_model("simple-cnn", 10), node, SETTINGS, cpu_workers=1)
    again.train(CohortTask(2, ids, global_params()))
    assert sizes == [1] * 6  # learned: no second out-of-memory error


def test_a_diverging_client_in_the_batched_trainer_does_not_poison_the_others() -> None:
    """NaN gradients for one client (one vmap lane): only that client comes back non-finite."""
    node = make_node()
    ids = list(range(len(SIZES)))
    victim = 4
    lane = plan_chunks({c: node.client_size(c) for c in ids}, SETTINGS, 0)[0].index(victim)
    # One worker thread, so that the victim's lane in the one chunk is known.
    poisoned = BatchedTrainer(build_model("simple-cnn", 10), node, SETTINGS, cpu_workers=1)
    # the one worker's grad for one run's clients (CPU: per-client convolutions, no timing)
    grad_fn = poisoned._grad_fn("per-client", 0, False)

    def nan_for_victim(params, *args):
        grads, ce = grad_fn(params, *args)
        if next(iter(params.values())).shape[0] > lane:  # the victim is still training
            grads = {n: g.clone() for n, g in grads.items()}
            for g in grads.values():
                g[lane] = float("nan")
        return grads, ce

    poisoned._grads["per-client", False][0] = nan_for_victim
    result = train_cohort(poisoned, CohortTask(1, ids, global_params()), seed=SETTINGS.seed)
    clean = BatchedTrainer(build_model("simple-cnn", 10), node, SETTINGS, cpu_workers=1
                           ).train(CohortTask(1, ids, global_params()))
    assert list(result.failures) == [victim] and "non-finite" in result.failures[victim]
    assert result.client_ids == [c for c in ids if c != victim]
    for cid in result.client_ids:
        assert_same_client(result, clean, cid, exact=True)


def test_a_reply_with_every_client_failed_packs_and_unpacks(flower_identity: None) -> None:
    task = CohortTask(1, [0, 1], global_params())
    result = train_cohort(trainer("sequential", make_node()), task, seed=0, fail_rate=0.999999)
    assert result.client_ids == [] and sorted(result.failures) == [0, 1]
    reply = unpack_reply(pack_reply(TrainReply(result.client_ids, result.params,
                                               result.num_examples, result.train_loss,
                                               result.failures)))
    assert reply.client_ids == [] and sorted(reply.failures) == [0, 1]
    assert all(v.shape[0] == 0 for v in reply.params.values())


# --- the server: collect, min-clients, failed nodes ---------------------------------------------


def weights_of(cid: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + cid)
    return {"w": torch.randn(3, 2, generator=g), "b": torch.randn(3, generator=g)}


def answer(msg: Message, sizes: dict[int, int], nan: set[int] = frozenset(),
           failed: dict[int, str] | None = None) -> Message:
    from fedwsa.protocol import unpack_request

    failed = failed or {}
    ids = [c for c in unpack_request(msg.content).client_ids if c not in failed]
    ws = [weights_of(c) for c in ids]
    for c, w in zip(ids, ws, strict=True):
        if c in nan:
            w["w"][0, 0] = float("nan")
    params = {k: torch.stack([w[k] for w in ws]) if ws else weights_of(0)[k][None][:0]
              for k in ("w", "b")}
    reply = TrainReply(ids, params, [sizes[c] for c in ids], [0.5] * len(ids), failed)
    return Message(pack_reply(reply), reply_to=msg)


SIZES8 = {c: 10 + 3 * c for c in range(8)}


def one_round(config_values: dict, how) -> tuple:
    strategy = CohortStrategy(make_config({"num-clients": 8, "seed": 1, **config_values}))
    g = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
    messages = list(strategy.configure_train(1, to_arrays(g), None, FakeGrid([7, 8])))
    replies = [how(m) for m in messages]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return strategy, messages, arrays, metrics


def test_failed_node_failed_and_nan_clients_are_left_out_and_counted(
        flower_identity: None, caplog: pytest.LogCaptureFixture) -> None:
    def how(msg: Message) -> Message:
        if msg.metadata.dst_node_id == 8:  # clients 4..7: the whole node fails
            return Message(Error(code=3, reason="out of memory"), reply_to=msg)
        return answer(msg, SIZES8, nan={1}, failed={2: "RuntimeError: boom"})

    with caplog.at_level(logging.WARNING):
        _, _, arrays, metrics = one_round({"min-clients": 2}, how)
    ok = [0, 3]
    n = np.array([SIZES8[c] for c in ok], dtype=np.float64)
    for name, value in from_arrays(arrays).items():
        expected = sum(n[i] * weights_of(c)[name].double().numpy() for i, c in enumerate(ok))
        np.testing.assert_allclose(value.numpy(), expected / n.sum(), rtol=1e-6)
    assert metrics["clients-sampled"] == 8 and metrics["clients-failed"] == 6
    assert metrics["global-updated"] == 1
    for text in ("client 1 left out of aggregation: non-finite weights",
                 "client 2 left out of aggregation: RuntimeError: boom",
                 "client 5 left out of aggregation: node 8 failed: out of memory"):
        assert text in caplog.text


def test_fewer_than_min_clients_keeps_the_previous_global_model(
        flower_identity: None, caplog: pytest.LogCaptureFixture) -> None:
    def how(msg: Message) -> Message:
        return answer(msg, SIZES8, failed={c: "RuntimeError: boom" for c in range(1, 8)})

    with caplog.at_level(logging.WARNING):
        strategy, _, arrays, metrics = one_round({"min-clients": 2}, how)
    assert strategy.min_clients == 2
    assert arrays is None and metrics["global-updated"] == 0
    assert metrics["clients-failed"] == 7 and "train-loss" not in metrics
    assert "only 1 client(s) succeeded (min-clients=2); keeping the previous" in caplog.text


def test_a_run_whose_node_always_fails_keeps_its_model_below_min_clients(
        tmp_path: Path, flower_identity: None) -> None:
    """Two nodes, one client each; node 2 crashes every round."""
    base = make_config({"dataset": "synthetic", "partition": "iid", "num-clients": 50,
                        "fraction-train": 0.04, "num-server-rounds": 2, "trainer": "sequential",
                        "seed": 2})
    kept = run_federation(LocalGrid([1, 2], failing_nodes=[2]),
                          base.replace(run_dir=str(tmp_path / "kept"), min_clients=2))
    rows = [json.loads(x) for x in (kept / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients-failed"] for r in rows] == [0, 1, 1]
    assert [r["global-updated"] for r in rows[1:]] == [0, 0]
    assert rows[1]["test-accuracy"] == rows[2]["test-accuracy"] == rows[0]["test-accuracy"]
    assert rows[1]["test-loss"] == rows[2]["test-loss"] == rows[0]["test-loss"]
    result = json.loads((kept / "result.json").read_text())  # over, but never updated
    assert result["status"] == "no-update" and result["rounds-without-update"] == 2

    moved = run_federation(LocalGrid([1, 2], failing_nodes=[2]),
                           base.replace(run_dir=str(tmp_path / "moved"), min_clients=1))
    rows = [json.loads(x) for x in (moved / "metrics.jsonl").read_text().splitlines()]
    assert [r["global-updated"] for r in rows[1:]] == [1, 1]
    assert rows[1]["test-loss"] != rows[0]["test-loss"]


def test_run_with_fail_rate_finishes_and_counts_the_failures(tmp_path: Path) -> None:
    """A real ``fedwsa run`` (Flower simulation engine) with injected client failures."""
    seed, rate, rounds = 8, 0.4, 2
    from fedwsa.strategies import sample_clients

    expected = [sum(injected_fault(seed, r, c, rate) for c in sample_clients(seed, r, 20, 0.2))
                for r in range(1, rounds + 1)]
    assert sum(expected) > 0  # this seed injects at least one failure
    run = tmp_path / "run"
    code = main(["run", "-c", f"dataset='synthetic' partition='iid' num-clients=20 "
                 f"fraction-train=0.2 num-server-rounds={rounds} seed={seed} fail-rate={rate} "
                 f"run-dir='{run}'"])
    assert code == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients-failed"] for r in rows[1:]] == expected
    assert all(r["clients-sampled"] == 4 for r in rows[1:])
    assert json.loads((run / "result.json").read_text())["status"] == "finished"


def test_replies_of_several_nodes_merge_into_one_id_sorted_stack() -> None:
    """``TrainReply.merged`` against splitting every reply into client rows and stacking them
    again in id order (what the server did before): the same tensors and lists; a single
    reply already in id order is used without a copy."""
    like = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}

    def reply(ids: list[int], with_outputs: bool = True) -> TrainReply:
        gen = torch.Generator().manual_seed(sum(ids) + len(ids))
        k = len(ids)
        return TrainReply(ids, {"w": torch.randn(k, 3, 2, generator=gen),
                                "b": torch.randn(k, 3, generator=gen)},
                          [10 * c for c in ids], [0.1 * c for c in ids], steps=[c + 1 for c in ids],
                          outputs={"o": torch.randn(k, 4, generator=gen)} if with_outputs else {})

    replies = [reply([5, 1, 7]), reply([], with_outputs=False), reply([0, 6])]
    got = TrainReply.merged(replies, like, {9: "node failed"})
    rows = sorted((row for r in replies for row in r.rows()), key=lambda row: row.client_id)
    want = TrainReply.from_rows(rows, like, {9: "node failed"})
    assert got.client_ids == want.client_ids == [0, 1, 5, 6, 7]
    for name in like:
        assert torch.equal(got.params[name], want.params[name])
    assert torch.equal(got.outputs["o"], want.outputs["o"])
    assert (got.num_examples, got.train_loss, got.steps, got.failures) == (
        want.num_examples, want.train_loss, want.steps, want.failures)
    alone = reply([2, 3, 8])
    same = TrainReply.merged([alone], like)
    assert same.params["w"].data_ptr() == alone.params["w"].data_ptr()
    empty = TrainReply.merged([reply([], with_outputs=False)], like, {4: "x"})
    assert empty.client_ids == [] and empty.params["w"].shape == (0, 3, 2)
