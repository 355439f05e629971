"""``save-client-models``: the sampled clients' trained weights kept per round in the run dir."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedwsa.clients.node import client_partitions
from fedwsa.config import make_config
from fedwsa.data import load_dataset
from fedwsa.results.client_models import (
    disk_cost_line,
    load_client_models,
    prune_client_models,
    rounds_to_save,
    save_client_models,
    saved_rounds,
)
from fedwsa.server.inprocess import run_in_process
from fedwsa.strategies import sample_clients


def test_schedules() -> None:
    assert rounds_to_save("none", 10) == []
    assert rounds_to_save("last", 10) == [10]
    assert rounds_to_save("every-3", 10) == [3, 6, 9, 10]
    assert rounds_to_save("every-1", 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="save-client-models='every-0'"):
        rounds_to_save("every-0", 3)


def test_kept_clients_average_to_the_fedavg_global_model(tmp_path: Path) -> None:
    """FedAvg's last global model is the example-weighted mean of the last round's clients,
    so the kept clients, averaged by hand in float64, give the saved final model."""
    config = make_config({"num-clients": 6, "fraction-train": 0.5, "num-server-rounds": 3,
                          "save-client-models": "every-2", "run-dir": str(tmp_path / "run"),
                          "seed": 4})
    run = run_in_process(config)
    assert saved_rounds(run) == [2, 3]
    kept = load_client_models(run, 3)
    assert kept.client_ids == sample_clients(4, 3, 6, 0.5)
    data = load_dataset(config.dataset, config.data_root, config.seed)
    sizes = [len(p) for p in client_partitions(config, data.y_train.numpy())]
    assert kept.num_examples == [sizes[c] for c in kept.client_ids]
    final = torch.load(run / "model.pt", weights_only=True)
    total = sum(kept.num_examples)
    for name, weights in final.items():
        mean = sum(n * kept.model(c)[name].double() for c, n in
                   zip(kept.client_ids, kept.num_examples, strict=True)) / total
        torch.testing.assert_close(weights.double(), mean, rtol=1e-5, atol=1e-6)
    assert not torch.equal(kept.params["fc3.weight"][0], kept.params["fc3.weight"][1])
    with np.load(run / "client-models" / "round-0002.npz", allow_pickle=False) as raw:
        assert raw["client-ids"].tolist() == sample_clients(4, 2, 6, 0.5)


def test_the_disk_cost_is_said_in_advance(tmp_path: Path) -> None:
    params = {"w": torch.zeros(1000, 250), "b": torch.zeros(250)}  # 1.001 MB per client
    line = disk_cost_line("every-2", 10, 20, params, tmp_path / "client-models")
    assert "5 round(s) x up to 20 clients x 1.00 MB = up to 100.1 MB" in line
    assert str(tmp_path / "client-models") in line


def test_damaged_and_foreign_files_are_named(tmp_path: Path) -> None:
    save_client_models(tmp_path, 1, [0, 2], [5, 7], {"w": torch.ones(2, 3)})
    good = load_client_models(tmp_path, 1)
    assert good.client_ids == [0, 2] and good.num_examples == [5, 7]
    assert torch.equal(good.model(2)["w"], torch.ones(3))
    path = tmp_path / "client-models" / "round-0001.npz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="round-0001.npz: not a readable client-models file"):
        load_client_models(tmp_path, 1)
    np.savez(tmp_path / "client-models" / "round-0002.npz", w=np.ones((2, 3)))
    with pytest.raises(ValueError, match="round-0002.npz: not a readable client-models file"):
        load_client_models(tmp_path, 2)
    np.savez(tmp_path / "client-models" / "round-0003.npz", **{
        "client-ids": np.arange(3), "num-examples": np.ones(3), "w": np.ones((2, 3))})
    with pytest.raises(ValueError, match="round-0003.npz: not a client-models file"):
        load_client_models(tmp_path, 3)


def test_a_resumed_run_drops_rounds_after_its_checkpoint(tmp_path: Path) -> None:
    for r in (1, 2, 3):
        save_client_models(tmp_path, r, [0], [1], {"w": torch.full((1, 2), float(r))})
    prune_client_models(tmp_path, after=1)
    assert saved_rounds(tmp_path) == [1]
