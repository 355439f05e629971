"""The CART strategies (METHODS.md section 2) against merging.cart, numpy and FedAvg."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import FakeGrid, fake_replies
from flwr.app import Message

from fedwsa.algorithms.base import own_arrays
from fedwsa.algorithms.cart import CartMerge, cart_seed
from fedwsa.algorithms.fedavg import WeightedMean
from fedwsa.algorithms.wsa import WsaTarget
from fedwsa.config import make_config
from fedwsa.maths.merging import cart, weighted_average
from fedwsa.maths.scope import fuse_scopes, model_scopes, stacked_scopes
from fedwsa.protocol import (
    TrainReply,
    TrainRequest,
    from_arrays,
    to_arrays,
    unbundle,
    unpack_reply,
    unpack_request,
)
from fedwsa.server.app import run_federation
from fedwsa.server.inprocess import InProcessGrid, run_in_process, server_identity
from fedwsa.strategies import build_strategy

Cart = FedWSACart = build_strategy


def sent_wsa(request: TrainRequest) -> dict[str, torch.Tensor]:
    """The WSA inputs a request carries (beta, mu, sigma)."""
    return own_arrays("wsa", request.shared)

SIZES = {c: 10 + 7 * c for c in range(10)}
BASE = {"num-clients": 10, "fraction-train": 0.6, "seed": 3, "model": "simple-cnn"}


def simple_cnn_like(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights named and shaped like the simple CNN's (conv, linear, biases)."""
    shapes = {"conv1.weight": (6, 3, 5, 5), "conv1.bias": (6,), "conv2.weight": (16, 6, 5, 5),
              "conv2.bias": (16,), "fc1.weight": (120, 400), "fc1.bias": (120,),
              "fc2.weight": (84, 120), "fc2.bias": (84,), "fc3.weight": (10, 84),
              "fc3.bias": (10,)}
    return {n: 0.1 * torch.randn(s, generator=gen) for n, s in shapes.items()}


def cart_replies(messages: list[Message], seed: int = 0
                 ) -> tuple[list[Message], dict[int, dict[str, torch.Tensor]]]:
    """Made-up simple-CNN-shaped client weights, seeded per (seed, client)."""
    return fake_replies(messages, SIZES,
                        lambda c: simple_cnn_like(torch.Generator().manual_seed(seed * 1000 + c)))


def one_round(strategy, nodes: list[int], server_round: int = 1):
    """configure_train -> fake replies -> aggregate_train; the messages, new global, weights."""
    global_params = simple_cnn_like(torch.Generator().manual_seed(99))
    messages = list(strategy.configure_train(server_round, to_arrays(global_params), None,
                                             FakeGrid(nodes)))
    replies, weights = cart_replies(messages, seed=server_round)
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return messages, from_arrays(arrays), weights


def stacked_inputs(weights: dict[int, dict[str, torch.Tensor]]
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The clients' weights stacked in id order and their example counts."""
    ids = sorted(weights)
    stacked = {n: torch.stack([weights[c][n] for c in ids]) for n in weights[ids[0]]}
    return stacked, torch.tensor([float(SIZES[c]) for c in ids])


def numpy_cart(weights: dict[int, dict[str, torch.Tensor]], r: float, lam: float
               ) -> dict[str, np.ndarray]:
    """Loop-over-clients CART on numpy.linalg.svd in float64 (METHODS.md section 2)."""
    ids = sorted(weights)
    n = np.array([SIZES[c] for c in ids], dtype=np.float64)
    p = n / n.sum()
    out = {}
    for name in weights[ids[0]]:
        x = np.stack([weights[c][name].double().numpy() for c in ids])
        avg = np.tensordot(p, x, axes=1)
        if x.ndim < 3:
            out[name] = avg
            continue
        mats, avg_m = x.reshape(len(ids), x.shape[1], -1), avg.reshape(x.shape[1], -1)
        k = max(1, math.floor(r * min(avg_m.shape)))
        acc = np.zeros_like(avg_m)
        for i in range(len(ids)):
            u, s, vt = np.linalg.svd(mats[i] - avg_m, full_matrices=False)
            acc += len(ids) * p[i] * (u[:, :k] * s[:k]) @ vt[:k]
        out[name] = (avg_m + lam * acc).reshape(avg.shape)
    return out


def test_registry_composes_the_cart_strategies() -> None:
    cart_only = build_strategy(make_config({"strategy": "cart"})).composition
    assert isinstance(cart_only.merge, CartMerge) and not cart_only.parts
    both = build_strategy(make_config({"strategy": "fedwsa-cart"})).composition
    assert isinstance(both.merge, CartMerge) and isinstance(both.parts[0], WsaTarget)
    plain = build_strategy(make_config({"strategy": "fedwsa"})).composition
    assert isinstance(plain.merge, WeightedMean) and plain.optimizer is None


def test_cart_aggregate_equals_merging_cart_and_numpy(flower_identity: None) -> None:
    config = make_config({**BASE, "strategy": "cart", "cart-rank": 0.25, "cart-lambda": 1.7})
    _, new_global, weights = one_round(Cart(config), [11, 12])
    assert len(weights) == 6
    stacked, n = stacked_inputs(weights)
    expected = cart(stacked, n, rank=0.25, lam=1.7, conv=True, svd="exact")
    reference = numpy_cart(weights, 0.25, 1.7)
    average = weighted_average(stacked, n)
    for name, value in new_global.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(value.double().numpy(), reference[name], rtol=1e-4,
                                   atol=1e-5, err_msg=name)
        if name.endswith("weight"):  # every weight here is a conv or linear matrix
            assert (value - average[name]).abs().max() > 1e-3, name
        else:
            torch.testing.assert_close(value, average[name])


def test_cart_conv_false_averages_conv_kernels(flower_identity: None) -> None:
    config = make_config({**BASE, "strategy": "cart", "cart-conv": False})
    _, new_global, weights = one_round(Cart(config), [11])
    stacked, n = stacked_inputs(weights)
    average = weighted_average(stacked, n)
    reference = numpy_cart(weights, config.cart_rank, config.cart_lambda)
    torch.testing.assert_close(new_global["conv2.weight"], average["conv2.weight"])
    np.testing.assert_allclose(new_global["fc1.weight"].double().numpy(),
                               reference["fc1.weight"], rtol=1e-4, atol=1e-5)


def test_randomized_svd_is_seeded_from_seed_and_round(flower_identity: None) -> None:
    config = make_config({**BASE, "strategy": "cart", "cart-svd": "randomized",
                          "cart-rank": 0.1, "cart-lambda": 1.5})
    torch.manual_seed(1234)
    rng_before = torch.random.get_rng_state()
    _, first, weights = one_round(Cart(config), [11, 12], server_round=4)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    torch.manual_seed(999)  # the global RNG must not matter
    _, again, _ = one_round(Cart(config), [11, 12, 13], server_round=4)
    stacked, n = stacked_inputs(weights)
    expected = cart(stacked, n, rank=0.1, lam=1.5, svd="randomized", seed=cart_seed(3, 4))
    for name in first:
        assert torch.equal(first[name], again[name]), name
        torch.testing.assert_close(first[name], expected[name], rtol=1e-6, atol=1e-6)
    assert len({cart_seed(3, r) for r in range(1, 51)} | {cart_seed(4, 1)}) == 51


def test_rank_one_cart_equals_fedavg_strategy_level(flower_identity: None) -> None:
    cart_cfg = make_config({**BASE, "strategy": "cart", "cart-rank": 1.0, "cart-lambda": 2.0})
    fedavg = build_strategy(make_config({**BASE, "strategy": "fedavg"}))
    _, got, _ = one_round(Cart(cart_cfg), [11, 12])
    _, want, _ = one_round(fedavg, [11, 12])
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_fedwsa_cart_merges_with_cart_and_fuses_client_scopes(flower_identity: None) -> None:
    config = make_config({**BASE, "strategy": "fedwsa-cart", "cart-rank": 0.25,
                          "cart-lambda": 1.7, "wsa-beta": 0.05, "wsa-fusion": "mixture"})
    strategy = FedWSACart(config)
    messages, new_global, weights = one_round(strategy, [11, 12])
    stacked, n = stacked_inputs(weights)
    names = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    # Round 1 sends the scope of the global model it sends.
    sent = [unpack_request(m.content) for m in messages]
    mu0, sigma0 = model_scopes(sent[0].global_params, names)
    assert strategy.part("wsa").layer_names == names
    for request in sent:
        wsa = sent_wsa(request)
        assert float(wsa["beta"]) == pytest.approx(0.05)
        np.testing.assert_allclose(wsa["mu"], mu0.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(wsa["sigma"], sigma0.numpy(), rtol=1e-6)
    # The global model is CART's; the next target fuses the clients' own scopes.
    expected = cart(stacked, n, rank=0.25, lam=1.7)
    for name in expected:
        torch.testing.assert_close(new_global[name], expected[name], rtol=1e-6, atol=1e-6)
    mu_c, sigma_c = stacked_scopes({k: stacked[k] for k in names}, names)
    mu_t, sigma_t = fuse_scopes(mu_c, sigma_c, n, "mixture")
    target = strategy.part("wsa").target
    assert target is not None
    torch.testing.assert_close(target[0], mu_t)
    torch.testing.assert_close(target[1], sigma_t)
    request2 = unpack_request(next(iter(strategy.configure_train(
        2, to_arrays(new_global), None, FakeGrid([11])))).content)
    np.testing.assert_allclose(sent_wsa(request2)["sigma"], sigma_t.numpy(), rtol=1e-6)


def test_fedwsa_cart_global_fusion_uses_the_cart_model(flower_identity: None) -> None:
    config = make_config({**BASE, "strategy": "fedwsa-cart", "wsa-fusion": "global",
                          "cart-rank": 0.25, "cart-lambda": 1.7})
    strategy = FedWSACart(config)
    _, new_global, _ = one_round(strategy, [11])
    names = strategy.part("wsa").layer_names
    mu, sigma = model_scopes(new_global, names)
    target = strategy.part("wsa").target
    assert target is not None
    torch.testing.assert_close(target[0], mu)
    torch.testing.assert_close(target[1], sigma)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


TINY = {"dataset": "synthetic", "num-clients": 20, "fraction-train": 0.15, "seed": 5,
        "num-server-rounds": 2, "trainer": "sequential", "device": "cpu"}


def test_rank_one_cart_equals_fedavg_end_to_end(tmp_path: Path) -> None:
    """Same seed, real training (in-process nodes): CART at full rank is FedAvg, up to SVD
    round-off (the centred updates sum to zero)."""
    runs = {}
    for strategy in ("fedavg", "cart"):
        config = make_config({**TINY, "strategy": strategy, "cart-rank": 1.0,
                              "cart-lambda": 1.9, "run-dir": str(tmp_path / strategy)})
        runs[strategy] = run_in_process(config)
    fedavg = torch.load(runs["fedavg"] / "model.pt")
    cart_model = torch.load(runs["cart"] / "model.pt")
    assert set(fedavg) == set(cart_model)
    for name in fedavg:
        torch.testing.assert_close(cart_model[name], fedavg[name], rtol=1e-4, atol=1e-5)
    rows = {s: _metrics(d) for s, d in runs.items()}
    assert [r["round"] for r in rows["cart"]] == [0, 1, 2]
    assert all(r["clients-sampled"] == 3 for r in rows["cart"][1:])
    for a, b in zip(rows["fedavg"], rows["cart"], strict=True):
        assert b["test-loss"] == pytest.approx(a["test-loss"], rel=1e-4)
        assert b["test-accuracy"] == pytest.approx(a["test-accuracy"], abs=2e-3)


class RecordingGrid(InProcessGrid):
    """In-process nodes that keep every request and reply, to check what crossed the wire."""

    def __init__(self) -> None:
        super().__init__(num_nodes=1)
        self.requests: list[TrainRequest] = []
        self.replies: list[TrainReply] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        # One run: each Message is a bundle of one request, each reply a bundle of one reply.
        self.requests += [unpack_request(c) for m in messages
                          for c in unbundle(m.content).values()]
        replies = super().send_and_receive(messages, timeout=timeout)
        self.replies += [unpack_reply(c) for m in replies for c in unbundle(m.content).values()]
        return replies


def test_fedwsa_cart_end_to_end_sends_the_fused_target_and_the_cart_model(tmp_path: Path
                                                                         ) -> None:
    """Real training: each round's request carries the WSA target fused from the previous
    round's client scopes, and the global model that is CART of the previous round's clients."""
    config = make_config({**TINY, "strategy": "fedwsa-cart", "wsa-beta": 0.1,
                          "cart-rank": 0.16, "cart-lambda": 1.5, "run-dir": str(tmp_path / "r")})
    grid = RecordingGrid()
    with server_identity():
        run_dir = run_federation(grid, config)
    first, second = grid.requests
    names = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    for request in grid.requests:
        assert float(sent_wsa(request)["beta"]) == pytest.approx(0.1)
    mu0, sigma0 = model_scopes(first.global_params, names)
    np.testing.assert_allclose(sent_wsa(first)["mu"], mu0.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sent_wsa(first)["sigma"], sigma0.numpy(), rtol=1e-5)
    reply = grid.replies[0]
    assert reply.client_ids == first.client_ids and len(reply.client_ids) == 3
    n = torch.tensor(reply.num_examples, dtype=torch.float64)
    mu_c, sigma_c = stacked_scopes({k: reply.params[k] for k in names}, names)
    mu_t, sigma_t = fuse_scopes(mu_c, sigma_c, n, "mean")
    np.testing.assert_allclose(sent_wsa(second)["mu"], mu_t.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sent_wsa(second)["sigma"], sigma_t.numpy(), rtol=1e-5)
    merged = cart(reply.params, n.float(), rank=0.16, lam=1.5)
    for name, value in second.global_params.items():
        torch.testing.assert_close(value, merged[name], rtol=1e-5, atol=1e-6)
    rows = _metrics(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["test-loss"]) for r in rows)
    assert rows[-1]["test-loss"] < rows[0]["test-loss"]


def test_fedwsa_cart_runs_end_to_end_with_flower(tmp_path: Path) -> None:
    """A real Flower simulation of fedwsa-cart: all rounds run, clients train, a model is saved."""
    from fedwsa.server.simulation import simulate

    config = make_config({**TINY, "strategy": "fedwsa-cart", "wsa-beta": 0.1,
                          "cart-rank": 0.16, "cart-lambda": 1.5, "run-dir": str(tmp_path / "r")})
    run_dir = simulate(config)
    rows = _metrics(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["clients-sampled"] == 3 and r["clients-failed"] == 0 for r in rows[1:])
    assert all(math.isfinite(r["test-loss"]) and math.isfinite(r["train-loss"])
               for r in rows[1:])
    assert rows[-1]["test-loss"] < rows[0]["test-loss"]  # 2 tiny rounds: loss moves, not acc
    assert json.loads((run_dir / "result.json").read_text())["status"] == "finished"
    model = torch.load(run_dir / "model.pt")
    assert all(torch.isfinite(v).all() for v in model.values())
