"""One seed fixes a run: same seed on the CPU, identical metrics.jsonl; another seed, other numbers.

Real runs through Flower's simulation engine (``fedwsa.cli.simulate``), so client training runs
in Ray worker processes, as in any ``fedwsa run``.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedwsa.config import make_config
from fedwsa.server.simulation import simulate

TIMING_KEYS = {"elapsed-s", "node-train-s", "round-s"}  # wall-clock numbers, different in every run


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines]


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path: Path) -> None:
    base = {"dataset": "synthetic", "partition": "iid", "num-clients": 20,
            "fraction-train": 0.2, "num-server-rounds": 2, "trainer": "batched",
            "lr": 0.05, "batch-size": 16, "augment": True, "fail-rate": 0.2}

    def run(name: str, seed: int) -> list[dict]:
        return rows(simulate(make_config({**base, "seed": seed, "run-dir": str(tmp_path / name)})))

    first, second, other = run("a", 3), run("b", 3), run("c", 4)

    assert [r["round"] for r in first] == [0, 1, 2]
    assert first == second  # every number: accuracies, losses, failures, client metrics
    acc = [r["test-accuracy"] for r in first]
    assert acc[-1] > 0.3  # it trained (chance is 0.1), so equal numbers mean something
    assert [r["test-accuracy"] for r in other] != acc
    assert [r["test-loss"] for r in other] != [r["test-loss"] for r in first]
    assert [r["train-loss"] for r in other][1:] != [r["train-loss"] for r in first][1:]
