"""Checkpoints and resume: safe loading, atomic replacement, and a resumed run that ends with the
same metrics.jsonl as the uninterrupted run (in-process, and after a real SIGKILL)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from local_grid import Crash, LocalGrid

import fedwsa.server.app
from fedwsa.cli import main
from fedwsa.config import RESUMABLE_KEYS, make_config
from fedwsa.results.rundir import RunWriter
from fedwsa.server.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    capture_rng,
    check_compatible,
    config_differences,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fedwsa.server.simulation import simulate
from fedwsa.strategies import CohortStrategy

TIMING_KEYS = {"elapsed-s", "node-train-s", "round-s"}  # wall-clock numbers, different in every run


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def small_params(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g),
            "fc.bias": torch.randn(5, generator=g)}


# --- the checkpoint file ------------------------------------------------------------------------


def test_roundtrip_restores_weights_state_metrics_and_rng(tmp_path: Path) -> None:
    params = small_params(0)
    state = {"velocity": {"fc.bias": torch.arange(5.0)}, "step": 7, "names": ["a", "b"],
             "pair": (1, 2.5), "none": None}
    rows = [{"round": 0, "test-accuracy": 0.1, "train-loss": None},
            {"round": 1, "test-accuracy": 1 / 3, "train-loss": float("nan")}]
    rng = capture_rng()
    expected_draws = (torch.rand(3).tolist(), np.random.rand(3).tolist(),
                      [random.random() for _ in range(3)], np.random.randn(), random.gauss(0, 1))
    save_checkpoint(tmp_path, Checkpoint(1, {"lr": 0.01}, params, state, rng, rows, 12.5))
    torch.rand(10), np.random.rand(10), random.random()  # move every RNG on

    ckpt = load_checkpoint(tmp_path)
    restore_rng(ckpt.rng)
    draws = (torch.rand(3).tolist(), np.random.rand(3).tolist(),
             [random.random() for _ in range(3)], np.random.randn(), random.gauss(0, 1))
    assert draws == expected_draws
    assert ckpt.round == 1 and ckpt.config == {"lr": 0.01} and ckpt.elapsed_s == 12.5
    for name, value in params.items():
        assert torch.equal(ckpt.params[name], value)
    assert torch.equal(ckpt.strategy["velocity"]["fc.bias"], torch.arange(5.0))
    assert ckpt.strategy["step"] == 7 and ckpt.strategy["pair"] == (1, 2.5)
    assert ckpt.metrics[1]["test-accuracy"] == 1 / 3 and np.isnan(ckpt.metrics[1]["train-loss"])


class _Planted:
    """Unpickling this object would create a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_runs_code_from_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    payload = {"format": 1, "round": 1, "config": "{}", "params": {}, "rng": {},
               "strategy": {"x": _Planted(marker)}, "metrics": "[]", "elapsed-s": 0.0}
    torch.save(payload, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="cannot be read") as refused:
        load_checkpoint(tmp_path)
    assert not marker.exists()
    # The message says what the file is and never passes on torch's advice to unpickle it.
    text = str(refused.value)
    assert "not a fedwsa checkpoint" in text and "never unpickles" in text
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text
    torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)  # the full unpickler would run it
    assert marker.exists()


def test_corrupt_or_missing_checkpoint_is_a_one_line_error_naming_run_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="there is none") as missing:
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x00not a zip file")
    with pytest.raises(CheckpointError, match="cannot be read") as corrupt:
        load_checkpoint(tmp_path)
    for err in (missing, corrupt):
        assert "'run-dir'" in str(err.value) and str(tmp_path) in str(err.value)
        assert "\n" not in str(err.value)


def test_strategy_state_that_would_not_load_is_refused_when_saving(tmp_path: Path) -> None:
    ckpt = Checkpoint(1, {}, small_params(0), {"target": np.zeros(3)}, capture_rng())
    with pytest.raises(TypeError, match=r"strategy.state_dict\(\)\['target'\] is a ndarray"):
        save_checkpoint(tmp_path, ckpt)
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_only_the_latest_checkpoint_is_kept_and_replaced_atomically(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for r in (1, 2):
        save_checkpoint(tmp_path, Checkpoint(r, {}, small_params(r), {}, capture_rng()))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
    assert load_checkpoint(tmp_path).round == 2

    def dies(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", dies)  # the process dies just before the rename
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, Checkpoint(3, {}, small_params(3), {}, capture_rng()))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
    assert load_checkpoint(tmp_path).round == 2
    assert torch.equal(load_checkpoint(tmp_path).params["fc.bias"], small_params(2)["fc.bias"])


def test_a_checkpoint_from_another_config_names_every_differing_key() -> None:
    saved = make_config({"lr": 0.01, "seed": 1, "num-server-rounds": 5}).to_dict()
    now = make_config({"lr": 0.1, "seed": 2, "num-server-rounds": 9, "resume": True,
                       "run-dir": "/elsewhere", "eval-every": 3, "device": "cpu"}).to_dict()
    assert config_differences(saved, now) == {"lr": (0.01, 0.1), "seed": (1, 2)}
    with pytest.raises(CheckpointError) as err:
        check_compatible(Checkpoint(1, saved, {}), now, "/run")
    text = str(err.value)
    assert "lr=0.1 (checkpoint: 0.01)" in text and "seed=2 (checkpoint: 1)" in text
    assert all(k in text for k in RESUMABLE_KEYS)
    check_compatible(Checkpoint(1, saved, {}), {**now, "lr": 0.01, "seed": 1}, "/run")


def test_run_writer_continuing_a_run_keeps_exactly_the_checkpoint_rows(tmp_path: Path) -> None:
    config = make_config({"run-dir": str(tmp_path)})
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r}) + "\n" for r in range(4)))
    (tmp_path / "result.json").write_text("{}")
    (tmp_path / "model.pt").write_bytes(b"old")
    writer = RunWriter(tmp_path, config, rows=[{"round": 0}, {"round": 1}])
    assert [r["round"] for r in metrics(tmp_path)] == [0, 1]
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "model.pt").exists()
    writer.append_metrics({"round": 2})
    assert [r["round"] for r in metrics(tmp_path)] == [0, 1, 2]


# --- resuming a run -----------------------------------------------------------------------------


class NoisyMomentum(CohortStrategy):
    """FedAvg with server momentum and a little noise from the global RNGs.

    A resumed run reproduces it only if the strategy state (the velocity) and every RNG state
    were checkpointed and restored.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.velocity: dict[str, torch.Tensor] = {}
        self.loaded: list[dict] = []

    def aggregate(self, server_round, global_params, updates):
        avg = super().aggregate(server_round, global_params, updates)
        noise = 1e-3 * (float(torch.rand(())) + np.random.rand() + random.random())
        out = {}
        for name, g in global_params.items():
            v = 0.5 * self.velocity.get(name, torch.zeros_like(g)) + (g - avg[name])
            self.velocity[name] = v
            out[name] = g - v + noise
        return out

    def state_dict(self) -> dict[str, object]:
        return {"velocity": {k: v.clone() for k, v in self.velocity.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.loaded.append(state)
        self.velocity = dict(state["velocity"])  # type: ignore[arg-type]


SMALL = {"dataset": "synthetic", "partition": "iid", "num-clients": 50, "fraction-train": 0.04,
         "trainer": "sequential", "seed": 5}


def test_resume_in_process_equals_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """Extend a finished run, crash mid-round, resume (config key resume=true, as flwr run does).

    checkpoint-every=2 with eval-every=1: the crash in round 4 leaves a metrics row for round 3
    that the checkpoint (round 2) does not cover; the resumed run must drop and redo it.
    """
    strategies: list[NoisyMomentum] = []

    def build(config):
        strategies.append(NoisyMomentum(config))
        return strategies[-1]

    monkeypatch.setattr(fedwsa.server.app, "build_strategy", build)
    base = make_config({**SMALL, "checkpoint-every": 2, "num-server-rounds": 4})

    ref = fedwsa.server.app.run_federation(LocalGrid([1, 2]),
                                           base.replace(run_dir=str(tmp_path / "ref")))
    run = str(tmp_path / "run")
    fedwsa.server.app.run_federation(LocalGrid([1, 2]),
                                     base.replace(run_dir=run, num_server_rounds=2))
    assert json.loads((Path(run) / "result.json").read_text())["rounds"] == 2
    with pytest.raises(Crash):  # extend to 4 rounds; the process dies during round 4
        fedwsa.server.app.run_federation(LocalGrid([1, 2], crash_at=4),
                                         base.replace(run_dir=run, resume=True))
    assert [r["round"] for r in metrics(Path(run))] == [0, 1, 2, 3]
    assert load_checkpoint(run).round == 2
    grid = LocalGrid([1, 2])
    fedwsa.server.app.run_federation(grid, base.replace(run_dir=run, resume=True))

    assert grid.rounds == [3, 4]
    assert without_timing(metrics(Path(run))) == without_timing(metrics(ref))
    loaded = strategies[-1].loaded  # the resumed strategy got the round-2 state, once
    assert len(loaded) == 1 and any(v.abs().sum() > 0 for v in loaded[0]["velocity"].values())
    final_ref = torch.load(ref / "model.pt", weights_only=True)
    final = torch.load(Path(run) / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], final_ref[k]) for k in final_ref)
    assert json.loads((Path(run) / "result.json").read_text())["rounds"] == 4


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, min_round: int) -> int:
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"fedwsa run exited ({proc.returncode}) before round "
                                 f"{min_round} was checkpointed")
        if (run_dir / CHECKPOINT_FILE).exists():
            r = load_checkpoint(run_dir).round  # replaced atomically: always complete
            if r >= min_round:
                return r
        time.sleep(0.05)


def test_sigkilled_run_resumed_ends_with_the_same_metrics(tmp_path: Path) -> None:
    """A real ``fedwsa run`` killed with SIGKILL (its whole process group, Ray included).

    SCAFFOLD clients with server momentum, 4 of 20 clients per round: the optimiser's
    velocity, SCAFFOLD's c and its on-disk store of c_i (written each round, checkpointed
    incrementally) must all survive the kill."""
    overrides = ("dataset='synthetic' partition='iid' num-clients=20 fraction-train=0.2 "
                 "num-server-rounds=3 seed=11 trainer='batched' lr=0.05 batch-size=16 "
                 "strategy='scaffold' server-opt='avgm' server-momentum=0.5")
    ref = simulate(make_config({**SMALL, "trainer": "batched", "num-clients": 20,
                                "fraction-train": 0.2, "num-server-rounds": 3, "seed": 11,
                                "lr": 0.05, "batch-size": 16, "strategy": "scaffold",
                                "server-opt": "avgm", "server-momentum": 0.5,
                                "run-dir": str(tmp_path / "ref")}))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedwsa.cli", "run", "-c", f"{overrides} run-dir='{run}'"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        killed_after = _wait_for_checkpoint(run, proc, 1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists() and killed_after < 3
    # As if the kill had come between writing round r+1's metrics row and its checkpoint:
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"round": killed_after + 1, "test-accuracy": -1.0}) + "\n")

    assert main(["run", "--resume", str(run)]) == 0

    assert [r["round"] for r in metrics(run)] == [0, 1, 2, 3]
    assert without_timing(metrics(run)) == without_timing(metrics(ref))
    assert metrics(ref)[-1]["test-accuracy"] > 0.3  # it trained: equal numbers mean something
    assert json.loads((run / "result.json").read_text())["status"] == "finished"
    assert main(["run", "--resume", str(run)]) == 2  # finished: nothing left to resume
    # The same control variates on disk, one file per client ever sampled.
    ref_files = sorted(p.name for p in (ref / "client-state").glob("*.npy"))
    assert sorted(p.name for p in (run / "client-state").glob("*.npy")) == ref_files
    assert 4 <= len(ref_files) <= 12
    for name in ref_files:
        assert (run / "client-state" / name).read_bytes() == \
            (ref / "client-state" / name).read_bytes(), name


def test_a_key_the_strategy_never_reads_does_not_block_a_resume() -> None:
    from fedwsa.config import make_config
    from fedwsa.server.checkpoint import config_differences

    for strategy, differs in (("fedavg", False), ("fedadam", False), ("cart", True),
                              ("fedwsa-cart", True)):
        saved = make_config({"strategy": strategy, "cart-lambda": 1.5}).to_dict()
        now = make_config({"strategy": strategy, "cart-lambda": 0.3}).to_dict()
        assert bool(config_differences(saved, now)) == differs, strategy
    saved = make_config({"strategy": "fedavg", "lr": 0.1}).to_dict()
    assert config_differences(saved, make_config({"strategy": "fedavg"}).to_dict()) == {
        "lr": (0.1, 0.01)}
