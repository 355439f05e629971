"""Server optimisers (METHODS.md section 4): FedAvgM, FedAdam, FedYogi, FedAdagrad against
Flower's own strategies fed the same client replies for several rounds; presets, combinations,
bad input, checkpoint and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import FakeGrid, fake_replies
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

from fedwsa.cli import main as cli_main
from fedwsa.config import ConfigError, make_config
from fedwsa.protocol import from_arrays, to_arrays
from fedwsa.server.inprocess import run_in_process
from fedwsa.strategies import build_strategy

SIZES = {c: 10 + 7 * c for c in range(10)}
BASE = {"num-clients": 10, "fraction-train": 0.6, "seed": 3}


def start_params() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
            "fc.weight": torch.randn(5, 7, generator=gen), "fc.bias": torch.randn(5, generator=gen)}


def flower_replies(weights: dict[int, dict[str, torch.Tensor]]) -> list[Message]:
    """One Flower-style reply per client, as Flower's own strategies expect."""
    out = []
    for c in sorted(weights):
        content = RecordDict({"arrays": ArrayRecord(dict(weights[c])),
                              "metrics": MetricRecord({"num-examples": SIZES[c]})})
        out.append(Message(content, dst_node_id=c + 1, message_type=MessageType.TRAIN))
    return out


CASES = [
    ("fedavgm", {"server-lr": 0.7, "server-momentum": 0.9},
     lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9)),
    ("fedadam", {}, lambda: FedAdam()),
    ("fedyogi", {}, lambda: FedYogi()),
    ("fedadagrad", {}, lambda: FedAdagrad(eta=0.01)),  # fedwsa's measured default eta
    ("fedadagrad", {"server-lr": 0.1}, lambda: FedAdagrad()),  # Flower's default eta
    ("fedadam", {"server-lr": 0.05, "server-beta1": 0.8, "server-beta2": 0.95,
                 "server-tau": 0.01},
     lambda: FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01)),
    ("fedavg", {"server-opt": "yogi", "server-lr": 0.03, "server-tau": 1e-4},
     lambda: FedYogi(eta=0.03, tau=1e-4)),
]


@pytest.mark.parametrize(("preset", "keys", "flower"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_global_arrays_match_flowers_strategy_over_rounds(flower_identity: None, preset: str,
                                                          keys: dict, flower) -> None:
    ours = build_strategy(make_config({**BASE, "strategy": preset, **keys}))
    theirs = flower()
    g_ours, g_theirs = start_params(), start_params()
    theirs.current_arrays = ArrayRecord(dict(g_theirs))  # FedAvgM
    for rnd in range(1, 6):
        gen = torch.Generator().manual_seed(rnd)
        noise = {c: {k: 0.3 * torch.randn(v.shape, generator=gen) for k, v in g_ours.items()}
                 for c in range(10)}
        messages = list(ours.configure_train(rnd, to_arrays(g_ours), None, FakeGrid([1, 2])))
        replies, weights = fake_replies(
            messages, SIZES, lambda c, g=g_ours, z=noise: {k: g[k] + z[c][k] for k in g})
        arrays, _ = ours.aggregate_train(rnd, replies)
        g_ours = from_arrays(arrays)
        # Flower's chain gets the same client weights, relative to its own global model.
        if not isinstance(theirs, FedAvgM):
            theirs.current_arrays = {k: v.numpy() for k, v in g_theirs.items()}
        client = {c: {k: g_theirs[k] + noise[c][k] for k in g_theirs} for c in weights}
        got, _ = theirs.aggregate_train(rnd, flower_replies(client))
        g_theirs = {k: v.float() for k, v in got.to_torch_state_dict().items()}
        for name in g_ours:
            torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=1e-5, atol=1e-5)
    moved = sum(float((g_ours[k] - start_params()[k]).abs().sum()) for k in g_ours)
    assert moved > 0.1


def test_avgm_with_no_momentum_and_unit_lr_returns_the_merge(flower_identity: None) -> None:
    plain = build_strategy(make_config({**BASE, "strategy": "fedavg"}))
    avgm = build_strategy(make_config({**BASE, "strategy": "fedavg", "server-opt": "avgm",
                                       "server-momentum": 0.0, "server-lr": 1.0}))
    out = []
    for strategy in (plain, avgm):
        messages = list(strategy.configure_train(1, to_arrays(start_params()), None,
                                                 FakeGrid([1])))
        replies, _ = fake_replies(messages, SIZES, lambda c: {
            k: v + c for k, v in start_params().items()})
        out.append(from_arrays(strategy.aggregate_train(1, replies)[0]))
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


# --- presets, combinations and bad input ------------------------------------------------------

def test_presets_pick_flowers_defaults_but_adagrads_measured_lr() -> None:
    def opt(**keys):
        return build_strategy(make_config({k.replace("_", "-"): v for k, v in keys.items()})
                              ).composition.optimizer

    assert opt(strategy="fedavg") is None and opt(strategy="fedprox") is None
    avgm = opt(strategy="fedavgm")
    assert (avgm.name, avgm.lr, avgm.momentum) == ("avgm", 1.0, 0.0)
    adam = opt(strategy="fedadam")
    assert (adam.eta, adam.beta1, adam.beta2, adam.tau) == (0.1, 0.9, 0.99, 1e-3)
    yogi = opt(strategy="fedyogi")
    assert (yogi.eta, yogi.beta1, yogi.beta2, yogi.tau) == (0.01, 0.9, 0.99, 1e-3)
    adagrad = opt(strategy="fedadagrad")
    assert (adagrad.eta, adagrad.beta1, adagrad.tau) == (0.01, 0.0, 1e-3)
    both = build_strategy(make_config({"strategy": "fedwsa-cart", "server-opt": "adam"}))
    assert [p.name for p in both.composition.all_parts()] == ["wsa", "cart", "adam"]
    assert opt(strategy="fedadam", server_opt="adam").name == "adam"


@pytest.mark.parametrize(("keys", "key"), [
    ({"strategy": "fedadam", "server-opt": "yogi"}, "server-opt"),
    ({"strategy": "fedavgm", "server-opt": "none"}, "server-opt"),
    ({"server-opt": "sgd"}, "server-opt"),
    ({"prox-mu": -0.1}, "prox-mu"),
    ({"server-beta1": 1.0}, "server-beta1"),
    ({"server-beta2": -0.5}, "server-beta2"),
    ({"server-tau": 0.0}, "server-tau"),
    ({"server-lr": 0}, "server-lr"),
    ({"server-lr": float("inf")}, "server-lr"),
    ({"server-momentum": float("nan")}, "server-momentum"),
    ({"server-lr": "fast"}, "server-lr"),
])
def test_bad_values_name_the_key_and_what_is_accepted(keys: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_config(keys)
    assert exc.value.key == key and "expected" in str(exc.value)


def test_cli_refuses_a_contradiction_before_any_work(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "never"
    status = cli_main(["run", "-c", f"strategy='fedadam' server-opt='yogi' run-dir='{run}'"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "server-opt" in err[0] and "'yogi'" in err[0] and "'adam'" in err[0]
    assert not run.exists()


def test_ignored_keys_stay_legal() -> None:
    """A compare grid shares base keys across strategies: fedavg with prox-mu is fine."""
    config = make_config({"strategy": "fedavg", "prox-mu": 0.5, "server-beta1": 0.5})
    assert build_strategy(config).composition.optimizer is None


# --- checkpoint and resume ----------------------------------------------------------------------

TINY = {"dataset": "synthetic", "num-clients": 20, "fraction-train": 0.15, "seed": 5,
        "trainer": "sequential", "device": "cpu", "lr": 0.05}


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("-s")} for r in rows]


@pytest.mark.parametrize("keys", [
    {"strategy": "fedadam", "server-lr": 0.01},
    {"strategy": "fedprox", "server-opt": "avgm", "server-momentum": 0.9, "prox-mu": 0.1},
    {"strategy": "fedyogi", "server-lr": 0.01},
], ids=["adam", "prox-avgm", "yogi"])
def test_stop_and_resume_equals_the_uninterrupted_run(tmp_path: Path, keys: dict) -> None:
    """The optimiser's moments are checkpointed: rounds after a resume are the same."""
    full = run_in_process(make_config({**TINY, **keys, "num-server-rounds": 3,
                                       "run-dir": str(tmp_path / "full")}))
    part = run_in_process(make_config({**TINY, **keys, "num-server-rounds": 2,
                                       "run-dir": str(tmp_path / "part")}))
    resumed = run_in_process(make_config({**TINY, **keys, "num-server-rounds": 3,
                                          "resume": True, "run-dir": str(part)}))
    assert _rows(resumed) == _rows(full)
    plain = run_in_process(make_config({**TINY, "num-server-rounds": 3,
                                        "run-dir": str(tmp_path / "fedavg")}))
    assert _rows(full)[-1]["test-loss"] != _rows(plain)[-1]["test-loss"]
    assert np.isfinite(_rows(full)[-1]["test-loss"])
