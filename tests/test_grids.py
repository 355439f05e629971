"""The shipped grids (grids/*.toml): they parse, every cell is a valid config, and the
NIID-Bench grids hold NIID-Bench's setting (METHODS.md section 5)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedwsa.config import STRATEGIES, make_config
from fedwsa.experiments.compare import build_spec, expand, read_grid_file

GRIDS = Path(__file__).resolve().parents[1] / "grids"
NIID_BENCH = {"dataset": "cifar10", "partition": "dirichlet", "partition-rng": "niid-bench",
              "alpha": 0.5, "min-partition-size": 10, "model": "simple-cnn", "local-epochs": 10,
              "batch-size": 64, "lr": 0.01, "momentum": 0.9, "weight-decay": 1e-5,
              "normalize": False, "augment": True, "crop-padding": "reflect", "prox-mu": 0.01}


@pytest.mark.parametrize("path", sorted(GRIDS.glob("*.toml")), ids=lambda p: p.name)
def test_every_cell_of_a_shipped_grid_is_a_valid_config(path: Path, tmp_path: Path) -> None:
    data = read_grid_file(path)
    spec = build_spec(data["strategies"], data["seeds"], data.get("sweep"), data.get("base"))
    assert {v.strategy for v in spec.strategies} <= set(STRATEGIES)
    cells = expand(spec, tmp_path)  # validates every cell's config
    assert len(cells) == len(spec.strategies) * len(spec.seeds) * math.prod(
        len(v) for v in spec.sweep.values())


@pytest.mark.parametrize(("name", "clients", "fraction", "rounds"), [
    ("niid-bench.toml", 10, 1.0, 50), ("niid-bench-100.toml", 100, 0.1, 500)])
def test_niid_bench_grids_hold_its_setting(name: str, clients: int, fraction: float,
                                           rounds: int) -> None:
    base = read_grid_file(GRIDS / name)["base"]
    config = make_config(base)
    assert {k: config.to_dict()[k] for k in NIID_BENCH} == NIID_BENCH
    assert (config.num_clients, config.fraction_train, config.num_server_rounds) == (
        clients, fraction, rounds)


def test_the_sweeps_that_share_fedavgs_reference_runs_share_its_setting() -> None:
    """The server-optimiser sweep and the widened sweep compare with the defaults sweep's FedAvg
    runs (docs/defaults-sweep.md), so every base key but the swept alpha must be the same."""
    narrow = read_grid_file(GRIDS / "defaults-sweep.toml")["base"]
    server_opt = read_grid_file(GRIDS / "server-opt-sweep.toml")
    wide = read_grid_file(GRIDS / "defaults-sweep-wide.toml")
    assert server_opt["base"] == narrow
    assert wide["base"] == {k: v for k, v in narrow.items() if k != "alpha"}
    assert narrow["alpha"] in wide["sweep"]["alpha"]
