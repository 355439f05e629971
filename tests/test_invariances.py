"""End-to-end invariances of the composed strategies (METHODS.md section 4): settings that
reduce an algorithm to FedAvg give FedAvg's metrics, with real training (in-process nodes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedwsa.config import make_config
from fedwsa.server.inprocess import run_in_process

TINY = {"dataset": "synthetic", "num-clients": 20, "fraction-train": 0.15, "seed": 5,
        "num-server-rounds": 2, "device": "cpu", "lr": 0.05}


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("-s")}
            for line in lines]


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fedavg") / "run"
    return run_in_process(make_config({**TINY, "strategy": "fedavg", "run-dir": str(out)}))


@pytest.mark.parametrize("keys", [
    {"strategy": "fedprox", "prox-mu": 0.0},
    {"strategy": "fedavg", "server-opt": "avgm", "server-momentum": 0.0, "server-lr": 1.0},
    {"strategy": "fedavgm"},  # Flower's defaults: momentum 0, lr 1
], ids=["fedprox-mu0", "avgm-m0-lr1", "fedavgm-defaults"])
def test_reduces_to_fedavg(fedavg_run: Path, tmp_path: Path, keys: dict) -> None:
    run = run_in_process(make_config({**TINY, **keys, "run-dir": str(tmp_path / "r")}))
    assert rows(run) == rows(fedavg_run)
    a = torch.load(fedavg_run / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fedprox_with_mu_changes_the_run(fedavg_run: Path, tmp_path: Path) -> None:
    run = run_in_process(make_config({**TINY, "strategy": "fedprox", "prox-mu": 1.0,
                                      "run-dir": str(tmp_path / "r")}))
    assert rows(run)[-1]["test-loss"] != rows(fedavg_run)[-1]["test-loss"]
