"""FedNova (METHODS.md section 4, NIID-Bench's normaliser): the normaliser against momentum SGD
itself, the merge against a loop over clients, and FedAvg invariance end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedwsa.algorithms import ClientUpdates
from fedwsa.algorithms.fednova import FedNovaMerge, normaliser
from fedwsa.config import make_config
from fedwsa.server.inprocess import run_in_process
from fedwsa.strategies import build_strategy


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("tau", [1, 2, 7, 40])
def test_normaliser_is_the_displacement_of_momentum_sgd_under_unit_gradients(
        tau: int, rho: float) -> None:
    """a_i is how far torch.optim.SGD(lr=1, momentum=rho) moves in tau steps of gradient 1."""
    x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=1.0, momentum=rho)
    for _ in range(tau):
        x.grad = torch.ones_like(x)
        opt.step()
    a = normaliser(torch.tensor([tau]), rho)
    assert float(a) == pytest.approx(-float(x.detach()), rel=1e-12)


def test_merge_equals_a_loop_over_clients_with_ragged_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    g = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    K = 5
    params = {k: v + 0.1 * torch.randn(K, *v.shape, generator=gen) for k, v in g.items()}
    n = torch.tensor([10, 40, 25, 5, 70])
    steps = torch.tensor([3, 12, 8, 1, 22])
    updates = ClientUpdates(list(range(K)), params, n, [0.0] * K, steps=steps)
    config = make_config({"strategy": "fednova", "momentum": 0.9})
    got = FedNovaMerge(config).merge(1, g, updates)
    p = n.double().numpy() / n.sum().item()
    a = [(t - 0.9 * (1 - 0.9**t) / (1 - 0.9)) / (1 - 0.9) for t in steps.tolist()]
    tau_eff = sum(p[i] * a[i] for i in range(K))
    for name in g:
        d = sum(p[i] * (g[name].double().numpy() - params[name][i].double().numpy()) / a[i]
                for i in range(K))
        np.testing.assert_allclose(got[name].double().numpy(),
                                   g[name].double().numpy() - tau_eff * d, rtol=1e-6, atol=1e-7)


def test_merge_refuses_missing_step_counts() -> None:
    g = {"w": torch.zeros(2)}
    updates = ClientUpdates([0, 1], {"w": torch.ones(2, 2)}, torch.tensor([1, 1]), [0.0, 0.0])
    with pytest.raises(ValueError, match="step count"):
        FedNovaMerge(make_config({"strategy": "fednova"})).merge(1, g, updates)


def test_composes_with_a_server_optimiser() -> None:
    parts = build_strategy(make_config({"strategy": "fednova", "server-opt": "adam"}))
    assert [p.name for p in parts.composition.all_parts()] == ["fednova", "adam"]


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.endswith("-s")} for x in lines]


def test_equal_iid_partitions_without_momentum_give_fedavg(tmp_path: Path) -> None:
    """20 equal IID partitions of the 5,000 synthetic images, momentum 0: every client makes
    the same number of steps, so FedNova's step is FedAvg's (up to float rounding)."""
    keys = {"dataset": "synthetic", "partition": "iid", "num-clients": 20,
            "fraction-train": 0.15, "seed": 5, "num-server-rounds": 2, "momentum": 0.0,
            "lr": 0.05, "device": "cpu"}
    runs = {s: rows(run_in_process(make_config({**keys, "strategy": s,
                                                "run-dir": str(tmp_path / s)})))
            for s in ("fedavg", "fednova")}
    assert [r["round"] for r in runs["fednova"]] == [0, 1, 2]
    for a, b in zip(runs["fedavg"], runs["fednova"], strict=True):
        assert b["test-loss"] == pytest.approx(a["test-loss"], rel=1e-5)
        assert b["test-accuracy"] == pytest.approx(a["test-accuracy"], abs=1e-3)
    assert runs["fedavg"][-1]["test-loss"] < runs["fedavg"][0]["test-loss"]


def test_ragged_clients_with_momentum_differ_from_fedavg(tmp_path: Path) -> None:
    keys = {"dataset": "synthetic", "partition": "dirichlet", "alpha": 0.3, "num-clients": 10,
            "fraction-train": 0.4, "seed": 2, "num-server-rounds": 2, "device": "cpu"}
    nova = rows(run_in_process(make_config({**keys, "strategy": "fednova",
                                            "run-dir": str(tmp_path / "n")})))
    avg = rows(run_in_process(make_config({**keys, "run-dir": str(tmp_path / "a")})))
    assert nova[-1]["test-loss"] != pytest.approx(avg[-1]["test-loss"], rel=1e-4)
