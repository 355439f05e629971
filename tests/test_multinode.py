"""More than one SuperNode: the cohort is split over the nodes and the run's numbers do not move.

This is the CPU stand-in for one SuperNode per GPU (``fedwsa run --num-gpus 1
--num-supernodes N``): the same split, the same Messages, the batched trainer on each node.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedwsa.cli import main
from fedwsa.clients.node import client_partitions
from fedwsa.config import make_config
from fedwsa.data import load_dataset

KEYS = {"dataset": "synthetic", "num-clients": 6, "num-server-rounds": 2, "seed": 5,
        "trainer": "batched", "batch-size": 32, "checkpoint-every": 0}


def overrides(run_dir: Path) -> str:
    return " ".join([f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                     for k, v in KEYS.items()] + [f"run-dir='{run_dir}'"])


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def padding_fraction(sizes: list[int], batch_size: int) -> float:
    padded = sum(-(-n // batch_size) * batch_size for n in sizes)
    return 1 - sum(sizes) / padded


def test_two_supernodes_give_the_same_metrics_as_one(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray keeps an OMP_NUM_THREADS that is already set: one torch thread on every node in
    # both runs (CPU float results are bit-identical only at equal thread counts).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["run", "-c", overrides(tmp_path / "one"), "--num-supernodes", "1"]) == 0
    assert main(["run", "-c", overrides(tmp_path / "two"), "--num-supernodes", "2"]) == 0
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["round"] for r in one] == [r["round"] for r in two] == [0, 1, 2]
    assert [r["test-accuracy"] for r in two] == [r["test-accuracy"] for r in one]
    np.testing.assert_allclose([r["test-loss"] for r in two], [r["test-loss"] for r in one],
                               rtol=1e-6)
    assert all(r["clients-sampled"] == 6 and r["clients-failed"] == 0 for r in two[1:])

    # The reply statistics show the split: each node pads its own clients' short last batches,
    # and the row holds the mean over nodes (three clients each with two nodes).
    labels = load_dataset("synthetic", "", KEYS["seed"]).y_train.numpy()
    sizes = [len(p) for p in client_partitions(make_config(KEYS), labels)]
    B = KEYS["batch-size"]
    assert one[-1]["node-wasted-fraction"] == pytest.approx(padding_fraction(sizes, B))
    halves = [padding_fraction(sizes[:3], B), padding_fraction(sizes[3:], B)]
    assert np.mean(halves) != pytest.approx(padding_fraction(sizes, B))  # tells them apart
    assert two[-1]["node-wasted-fraction"] == pytest.approx(np.mean(halves))


def test_num_gpus_without_a_gpu_fails_before_flower_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray would build no actor for a 1-GPU node and the run would hang; fail with one line."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["run", "-c", overrides(tmp_path / "gpu"), "--num-gpus", "1",
                 "--num-supernodes", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--num-gpus" in err and "no CUDA device" in err
    assert not (tmp_path / "gpu").exists()
