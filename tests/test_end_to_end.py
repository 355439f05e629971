"""Real Flower simulations on the synthetic set: accuracy rises, and node layout changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from fedwsa.config import make_config
from fedwsa.server.simulation import simulate


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_synthetic_run_learns_far_above_chance(tmp_path: Path) -> None:
    config = make_config({"dataset": "synthetic", "num-clients": 10, "num-server-rounds": 4,
                          "run-dir": str(tmp_path / "run"), "seed": 1})
    run_dir = simulate(config)
    rows = metrics(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["test-accuracy"] < 0.2            # 10 classes: chance is 0.1
    assert rows[-1]["test-accuracy"] > 0.6
    assert all(r["clients-sampled"] == 10 and r["clients-failed"] == 0 for r in rows[1:])
    assert {"round", "elapsed-s", "test-loss", "test-accuracy", "train-loss"} <= set(rows[-1])
    assert json.loads((run_dir / "config.json").read_text())["num-clients"] == 10
    assert json.loads((run_dir / "result.json").read_text())["status"] == "finished"
    assert (run_dir / "model.pt").exists()


def test_one_client_per_node_equals_one_node_for_the_cohort(tmp_path: Path) -> None:
    """The classic Flower layout (a SuperNode per client) runs the same code, same numbers.

    Both layouts get one CPU per node: CPU results are bit-identical only at equal thread counts.
    """
    base = {"dataset": "synthetic", "num-clients": 4, "num-server-rounds": 2, "seed": 2,
            "trainer": "sequential"}
    one = simulate(make_config({**base, "run-dir": str(tmp_path / "one")}), num_supernodes=1,
                   cpus_per_node=1)
    classic = simulate(make_config({**base, "run-dir": str(tmp_path / "classic")}),
                       num_supernodes=4, cpus_per_node=1)
    acc = [[r["test-accuracy"] for r in metrics(d)] for d in (one, classic)]
    loss = [[r["test-loss"] for r in metrics(d)] for d in (one, classic)]
    assert acc[0] == acc[1] and loss[0] == loss[1]
