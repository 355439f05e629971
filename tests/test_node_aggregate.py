"""``node-aggregate``: a node sends sum_i c_i theta_i over its clients (float64) and their scopes
instead of every client's weights, and nothing a run records changes.

The maths is checked against slow loops and the closed forms; the runs against the same runs
with every client's weights on the wire (``node-aggregate=false``), over one node and three.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from fedwsa.algorithms import PRESETS, compose, linear_merge
from fedwsa.algorithms.base import ClientUpdates, SummedOnNodes
from fedwsa.algorithms.fednova import normaliser
from fedwsa.clients.client_app import answer
from fedwsa.config import make_config
from fedwsa.maths import merging
from fedwsa.maths.merging import weighted_average, weighted_sums
from fedwsa.maths.scope import regularised_names, stacked_scopes
from fedwsa.protocol import (
    SCOPES,
    NodeAnswer,
    TrainReply,
    TrainRequest,
    pack_reply,
    unpack_reply,
)
from fedwsa.server.inprocess import run_cells_in_process, run_in_process
from fedwsa.strategies.cohort import CohortStrategy, model_parameters

BASE = {"dataset": "synthetic", "num-clients": 6, "num-server-rounds": 3, "seed": 2,
        "batch-size": 32, "tensorboard": False, "checkpoint-every": 0}
WALL_CLOCK = {"elapsed-s", "round-s", "node-train-s"}


def stack(k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """K clients' weights with a conv kernel, a matrix and a bias (two regularised layers)."""
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(k, 4, 3, 3, 3, generator=g),
            "fc.weight": torch.randn(k, 5, 7, generator=g) * 0.1,
            "fc.bias": torch.randn(k, 5, generator=g)}


def test_weighted_sums_match_a_slow_loop() -> None:
    params = stack(5)
    c = torch.tensor([3.0, 0.5, 7.0, 1.25, 2.0], dtype=torch.float64)
    sums = weighted_sums(params, c)
    for name, t in params.items():
        slow = torch.zeros(t.shape[1:], dtype=torch.float64)
        for i in range(t.shape[0]):
            slow += float(c[i]) * t[i].double()
        assert sums[name].dtype == torch.float64
        torch.testing.assert_close(sums[name], slow, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="length K=5"):
        weighted_sums(params, c[:3])


def updates_of(params: dict[str, torch.Tensor], n: list[int], steps: list[int]) -> ClientUpdates:
    return ClientUpdates(list(range(len(n))), params, torch.tensor(n), [0.0] * len(n),
                         steps=torch.tensor(steps))


def test_the_mean_from_sums_is_the_weighted_average() -> None:
    params, n = stack(4), [10, 40, 25, 5]
    merge = linear_merge(make_config({"strategy": "fedavg"}))
    assert merge is not None
    got = merge.merge(1, {k: v[0] for k, v in params.items()}, updates_of(params, n, [1] * 4))
    ref = weighted_average(params, torch.tensor(n, dtype=torch.float32))
    for name in params:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-7)


def test_fednova_from_sums_is_its_closed_form() -> None:
    """theta_g - (sum_i p_i a_i) sum_i p_i (theta_g - theta_i) / a_i, a_i NIID-Bench's, written
    out client by client."""
    params, n, steps, rho = stack(3, seed=1), [30, 12, 50], [5, 2, 8], 0.9
    global_params = {k: v.mean(dim=0) for k, v in stack(3, seed=2).items()}
    merge = linear_merge(make_config({"strategy": "fednova", "momentum": rho}))
    assert merge is not None
    got = merge.merge(1, global_params, updates_of(params, n, steps))
    p = [ni / sum(n) for ni in n]
    a = [(t - rho * (1 - rho**t) / (1 - rho)) / (1 - rho) for t in steps]
    tau_eff = sum(pi * ai for pi, ai in zip(p, a, strict=True))
    for name, g in global_params.items():
        d = sum(p[i] / a[i] * (g.double() - params[name][i].double()) for i in range(3))
        torch.testing.assert_close(got[name], (g.double() - tau_eff * d).float(),
                                   rtol=1e-6, atol=1e-7)
    assert normaliser(torch.tensor(steps), 0.0).tolist() == [5.0, 2.0, 8.0]


def test_sums_of_disjoint_groups_merge_to_the_whole_cohorts_model() -> None:
    """What the server does with two nodes' sums equals the merge of all clients' weights."""
    params, n, steps = stack(5, seed=3), [9, 17, 4, 30, 11], [3, 5, 1, 8, 4]
    global_params = {k: v[0] for k, v in stack(1, seed=4).items()}
    for strategy in ("fedavg", "fednova"):
        merge = linear_merge(make_config({"strategy": strategy}))
        assert merge is not None
        c = merge.coefficients(torch.tensor(n), torch.tensor(steps))
        first = weighted_sums({k: v[:2] for k, v in params.items()}, c[:2])
        second = weighted_sums({k: v[2:] for k, v in params.items()}, c[2:])
        whole = updates_of(params, n, steps)
        summed = updates_of({}, n, steps)
        summed.sums = {k: first[k] + second[k] for k in first}
        by_sums = merge.merge(1, global_params, summed)
        by_stack = merge.merge(1, global_params, whole)
        for name in params:
            torch.testing.assert_close(by_sums[name], by_stack[name], rtol=1e-7, atol=1e-8)


def reply(ids: list[int], seed: int) -> TrainReply:
    params = stack(len(ids), seed=seed)
    return TrainReply(ids, params, [10 * (i + 1) for i in ids], [0.5 + i for i in ids],
                      steps=[2] * len(ids))


def test_a_summed_reply_carries_one_model_and_every_clients_scopes(flower_identity: None
                                                                     ) -> None:
    full = reply([0, 1, 2, 3], seed=5)
    c = torch.tensor(full.num_examples, dtype=torch.float64)
    content = pack_reply(full.summed(c))
    arrays = content.array_records["arrays"].to_torch_state_dict()
    assert {k: tuple(v.shape) for k, v in arrays.items()} == {
        k: tuple(v.shape[1:]) for k, v in full.params.items()}     # one model, not four
    assert all(v.dtype == torch.float64 for v in arrays.values())
    back = unpack_reply(content)
    assert back.params == {} and back.sums is not None and back.scopes is not None
    for name, t in weighted_sums(full.params, c).items():
        assert torch.equal(back.sums[name], t)
    names = regularised_names(full.params, stacked=True)
    mu, sigma = stacked_scopes(full.params, names)
    assert back.scopes.names == names == ["conv.weight", "fc.weight"]
    assert torch.equal(back.scopes.mu, mu) and torch.equal(back.scopes.sigma, sigma)
    assert back.client_ids == full.client_ids and back.train_loss == full.train_loss
    assert SCOPES in content.array_records


def test_sums_and_scopes_are_made_in_float64_chunks_of_clients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a chunk budget of a few clients, the node's sum and scopes and the server's
    ``weighted_sums`` equal a plain float64 loop over clients (the reference), and no
    float64 copy ever holds more clients than the budget allows."""
    full = reply([0, 1, 2, 3, 4, 5, 6], seed=11)
    c = torch.tensor(full.num_examples, dtype=torch.float64)
    widest = max(v[0].numel() for v in full.params.values())
    monkeypatch.setattr(merging, "FLOAT64_CHUNK_BYTES", 8 * widest * 3)   # 3 clients
    seen: list[int] = []
    real_double = torch.Tensor.double

    def counting_double(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.numel())
        return real_double(t)

    monkeypatch.setattr(torch.Tensor, "double", counting_double)
    summed = full.summed(c)
    monkeypatch.setattr(torch.Tensor, "double", real_double)
    widest_name = next(n for n, v in full.params.items() if v[0].numel() == widest)
    assert max(seen) <= 3 * widest < full.params[widest_name].numel()  # within the budget
    assert [len(range(7)[r]) for r in merging.float64_chunks(full.params[widest_name])] == [3, 3, 1]
    for name, t in full.params.items():
        reference = sum(c[i] * t[i].double() for i in range(len(c)))
        torch.testing.assert_close(summed.sums[name], reference, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(weighted_sums(full.params, c)[name], reference,
                                   rtol=1e-12, atol=1e-12)
    assert summed.scopes is not None
    for j, name in enumerate(summed.scopes.names):
        for i in range(len(c)):
            w = full.params[name][i].double()
            torch.testing.assert_close(summed.scopes.mu[i, j], w.mean().float())
            torch.testing.assert_close(summed.scopes.sigma[i, j], w.std(correction=0).float())


def test_summed_replies_merge_in_client_order_whichever_node_answers_first() -> None:
    like = {k: v[0] for k, v in stack(1).items()}
    a, b = reply([3, 4], seed=6), reply([0, 1, 2], seed=7)
    ca, cb = (torch.tensor(r.num_examples, dtype=torch.float64) for r in (a, b))
    sa, sb = a.summed(ca), b.summed(cb)
    one, two = TrainReply.merged([sa, sb], like), TrainReply.merged([sb, sa], like)
    assert one.client_ids == two.client_ids == [0, 1, 2, 3, 4]
    for name in like:
        assert torch.equal(one.sums[name], two.sums[name])  # type: ignore[index]
        torch.testing.assert_close(one.sums[name], sb.sums[name] + sa.sums[name])  # type: ignore[index]
    whole = {k: torch.cat([b.params[k], a.params[k]]) for k in like}
    mu, _ = stacked_scopes(whole, ["conv.weight", "fc.weight"])
    assert torch.equal(one.scopes.mu, mu)  # type: ignore[union-attr]
    assert one.num_examples == [10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="others their sum"):
        TrainReply.merged([sa, b], like)
    other_model = a.summed(ca)
    other_model.sums = {**sa.sums, "extra.weight": torch.zeros(2)}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="differ in their parameter or scope names"):
        TrainReply.merged([other_model, sb], like)
    other_layers = a.summed(ca)
    other_layers.scopes = dataclasses.replace(  # type: ignore[type-var]
        other_layers.scopes, names=["fc.weight", "conv.weight"])
    with pytest.raises(ValueError, match="differ in their parameter or scope names"):
        TrainReply.merged([other_layers, sb], like)


def test_per_node_a_bad_sum_fails_its_clients_and_unsummed_weights_are_summed(
        flower_identity: None) -> None:
    """Per node: a non-finite sum fails that node's clients only; a node that sent its clients'
    weights though asked to sum them (it could not) is summed on the server."""
    config = make_config({"strategy": "fedavg", "model": "simple-cnn"})
    strategy = CohortStrategy(config)
    assert strategy.node_sums
    like = {k: torch.zeros(v.shape) for k, v in model_parameters(config).items()}

    def weights(ids: list[int], seed: int) -> TrainReply:
        g = torch.Generator().manual_seed(seed)
        params = {k: torch.randn(len(ids), *v.shape, generator=g) for k, v in like.items()}
        return TrainReply(ids, params, [10 + i for i in ids], [1.0] * len(ids),
                          steps=[1] * len(ids))

    good, bad, unsummed = weights([0, 1], 1), weights([2, 3], 2), weights([4], 3)

    def coeffs(r: TrainReply) -> torch.Tensor:
        return torch.tensor(r.num_examples, dtype=torch.float64)

    bad_sum = bad.summed(coeffs(bad))
    bad_sum.sums["fc3.bias"][0] = float("inf")  # type: ignore[index]
    strategy._sent, strategy._global = {1: [0, 1], 2: [2, 3], 3: [4]}, like
    updates = strategy.collect([
        NodeAnswer(1, pack_reply(good.summed(coeffs(good)))),
        NodeAnswer(2, pack_reply(bad_sum)),
        NodeAnswer(3, pack_reply(unsummed))])
    assert updates.client_ids == [0, 1, 4] and sorted(updates.failures) == [2, 3]
    assert updates.sums is not None and isinstance(updates.params, SummedOnNodes)
    with pytest.raises(RuntimeError, match="needs_client_weights"):
        updates.params["fc3.bias"]  # a part that reads the clients' weights fails loudly
    kept = {k: torch.cat([good.params[k], unsummed.params[k]]) for k in like}
    expected = weighted_sums(kept, torch.tensor([10.0, 11.0, 14.0], dtype=torch.float64))
    for name, t in expected.items():
        torch.testing.assert_close(updates.sums[name], t, rtol=1e-12, atol=1e-12)


def test_a_non_finite_sum_fails_all_of_its_nodes_clients() -> None:
    summed = reply([0, 1], seed=8).summed(torch.ones(2, dtype=torch.float64))
    assert summed.finite_only() is summed
    summed.sums["fc.bias"][0] = float("nan")  # type: ignore[index]
    kept = summed.finite_only()
    assert kept.client_ids == [] and sorted(kept.failures) == [0, 1]
    assert "non-finite" in kept.failures[0]


@pytest.mark.parametrize("strategy", list(PRESETS))
def test_which_runs_sum_on_the_nodes(strategy: str) -> None:
    """Every preset whose merge is linear and whose parts read no client's own weights."""
    config = make_config({"strategy": strategy})
    composition = compose(config, model_parameters(config))
    expected = strategy not in {"cart", "fedwsa-cart", "scaffold", "fedwsa-scaffold"}
    assert CohortStrategy.sums_on_nodes(config, composition) is expected
    for off in ({"node-aggregate": False}, {"save-client-models": "every-1"}):
        config = make_config({"strategy": strategy, **off})
        assert not CohortStrategy.sums_on_nodes(config, compose(config, model_parameters(config)))


def test_a_node_asked_to_sum_a_run_that_cannot_be_summed_says_why() -> None:
    config = make_config({"strategy": "cart"})
    request = TrainRequest(1, [0, 1], config.to_json(), {}, reduce=True)
    with pytest.raises(ValueError, match="does not merge linearly"):
        answer(request, config, reply([0, 1], seed=9))
    assert answer(TrainRequest(1, [0], config.to_json(), {}), config,
                  reply([0], seed=9)).sums is None


@pytest.fixture
def summed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of clients of every reply summed on a node, as it happens."""
    calls: list[int] = []
    original = TrainReply.summed

    def spy(self: TrainReply, coefficients: torch.Tensor) -> TrainReply:
        calls.append(len(self.client_ids))
        return original(self, coefficients)

    monkeypatch.setattr(TrainReply, "summed", spy)
    return calls


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(a: list[dict], b: list[dict]) -> None:
    """Every recorded number but the wall clock and the nodes' own statistics."""
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        keys = {k for k in ra if k not in WALL_CLOCK and not k.startswith("node-")}
        assert keys == {k for k in rb if k not in WALL_CLOCK and not k.startswith("node-")}
        for k in keys:
            expected = None if ra[k] is None else pytest.approx(ra[k], rel=1e-6, abs=1e-9)
            assert rb[k] == expected, (ra["round"], k)


@pytest.mark.parametrize("strategy", ["fedavg", "fednova", "fedwsa", "fedadam"])
def test_summing_on_three_nodes_records_what_every_clients_weights_give(
        strategy: str, tmp_path: Path, summed: list[int]) -> None:
    """fail-rate makes some clients fail on their node: they are left out of its sum too."""
    keys = {**BASE, "strategy": strategy, "fail-rate": 0.2}
    weights = run_in_process(make_config({**keys, "node-aggregate": False,
                                          "run-dir": str(tmp_path / "weights")}))
    assert summed == []
    sums = run_in_process(make_config({**keys, "run-dir": str(tmp_path / "sums")}), num_nodes=3)
    assert_same_metrics(rows(weights), rows(sums))
    assert sum(r["clients-failed"] for r in rows(sums)) > 0
    # Every node summed its successful clients (a node whose clients all failed sends none).
    assert 0 < len(summed) <= 3 * BASE["num-server-rounds"]
    assert sum(summed) == sum(r["clients-sampled"] - r["clients-failed"] for r in rows(sums))


def test_stacked_cells_sum_per_cell(tmp_path: Path, summed: list[int]) -> None:
    """A federation of several runs (compare's stacked cells, some trained in one fused call):
    each run's clients are summed on their own."""
    strategies = ["fedavg", "fednova", "fedprox", "scaffold"]

    def grid(name: str, aggregate: bool) -> list[Path]:
        configs = [make_config({**BASE, "strategy": s, "node-aggregate": aggregate,
                                "run-dir": str(tmp_path / name / s)}) for s in strategies]
        outcome = run_cells_in_process(configs, num_nodes=2)
        assert all(v is None for v in outcome.values()), outcome
        return [tmp_path / name / s for s in strategies]

    weights = grid("weights", False)
    assert summed == []
    sums = grid("sums", True)
    # fedavg, fednova and fedprox on 2 nodes x 3 rounds (3 clients each); scaffold never.
    assert summed == [3] * (3 * 2 * BASE["num-server-rounds"])
    for a, b in zip(weights, sums, strict=True):
        assert_same_metrics(rows(a), rows(b))
