"""Stacked grids: the cells of a grid run as ONE federation, and nothing changes but the time.

Every cell keeps its own strategy, server optimiser state, global model, RNG streams, failures
and checkpoints; a node answers all of them from one Message per round. These tests run the
same grid stacked and one by one and compare every cell's numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedwsa.experiments.compare import build_spec, run_grid
from fedwsa.protocol import bundle, error_content, error_of, unbundle
from fedwsa.server.inprocess import run_cells_in_process, run_in_process

TIMING = {"elapsed-s", "node-train-s", "round-s"}
BASE = {"dataset": "synthetic", "num-clients": 4, "num-server-rounds": 2, "batch-size": 64,
        "partition": "dirichlet", "alpha": 0.3}
# Other client objectives, other server steps. (A sign-like server optimiser such as FedAdam
# turns float rounding in near-zero pseudo-gradient entries into steps of +-server-lr, so runs
# that agree to rounding on the clients can part after a round: not a stacking test.)
STRATEGIES = [{"strategy": "fedprox", "prox-mu": 0.1},
              {"strategy": "fedwsa", "server-opt": "avgm", "server-momentum": 0.5}]


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_both(tmp_path: Path, strategies: list, seeds: list[int], sweep: dict,
             base: dict | None = None) -> tuple[Path, Path]:
    spec = build_spec(strategies, seeds, sweep, {**BASE, **(base or {})})
    for name, one_by_one in (("stacked", False), ("single", True)):
        run_grid(spec, tmp_path / name, progress="off", one_by_one=one_by_one,
                 simulate=lambda c, n, g: run_in_process(c, num_nodes=n),
                 simulate_cells=lambda cs, n, g: run_cells_in_process(cs, num_nodes=n),
                 num_supernodes=2)
    return tmp_path / "stacked", tmp_path / "single"


def count_fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Runs per joint batched call on the nodes, counted when the call went through."""
    import fedwsa.clients.client_app as client_app

    calls: list[int] = []
    real = client_app.train_fused

    def counting(runs):  # type: ignore[no-untyped-def]
        replies = real(runs)
        calls.append(len(runs))
        return replies

    monkeypatch.setattr(client_app, "train_fused", counting)
    return calls


def record_batched_tasks(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Per joint call: its clients, the rows of its runs' models, shared inputs and SGD
    settings (None: the same for all), each client's run, and the rows of each per-client
    input's table."""
    from fedwsa.clients.batched import BatchedTrainer

    tasks: list[dict] = []
    real = BatchedTrainer.train

    def rows(arrays: dict | None) -> int | None:
        counts = {len(v) for v in (arrays or {}).values()}
        assert len(counts) <= 1, counts  # every array of a kind has the same rows
        return counts.pop() if counts else None

    def recording(self, task):  # type: ignore[no-untyped-def]
        if task.run_params is not None:
            tasks.append({"clients": len(task.client_ids), "models": rows(task.run_params),
                          "shared": rows(task.run_shared), "hyper": rows(task.run_hyper),
                          "run_of": task.run_of,
                          "table": {n: len(v) for n, v in task.inputs.per_client.items()}})
        return real(self, task)

    monkeypatch.setattr(BatchedTrainer, "train", recording)
    return tasks


def test_stacked_grid_equals_running_the_cells_one_by_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """2 strategies (other client objectives, other server optimisers) x 2 seeds x 2 lr.

    Each strategy's two lr runs of a seed train in one batched call per node and round, with
    each client's lr as a tensor in the step: float tolerance (local SGD can amplify rounding
    over its steps; bits are not promised across CPUs). Central evaluation stacks every
    cell's global model in one pass, as on a GPU (the synthetic set is drawn from the seed:
    one pass per seed)."""
    calls = count_fused_calls(monkeypatch)
    tasks = record_batched_tasks(monkeypatch)
    passes = count_evaluation_passes(monkeypatch, per_pass=16)
    stacked, single = run_both(tmp_path, STRATEGIES, [0, 1], {"lr": [0.01, 0.02]})
    assert calls == [4] * 2 * 2 * 2  # 2 rounds x 2 nodes x 2 seeds (2 strategies x 2 lr)
    # Each joint call's lr, momentum and weight decay: one row per run, not per client.
    assert [(t["clients"], t["models"], t["hyper"], t["run_of"], t["table"]) for t in tasks] \
        == [(8, 4, 4, (0, 0, 1, 1, 2, 2, 3, 3), {})] * 8  # no per-client inputs
    assert passes[:6] == [4] * 6  # rounds 0, 1, 2 x 2 seeds, stacked; then one by one
    assert passes[6:] == [1] * 8 * 3
    cells = sorted(p.name for p in single.iterdir() if (p / "config.json").exists())
    assert len(cells) == 8
    for name in cells:
        assert (stacked / name / "result.json").exists(), name
        got, want = rows(stacked / name), rows(single / name)
        drop = {"node-wasted-fraction"}
        assert [sorted(set(r) - drop) for r in got] == [sorted(set(r) - drop) for r in want]
        for g, w in zip(got, want, strict=True):
            for key in set(w) - drop:
                if w[key] is None:
                    assert g[key] is None, (name, key)
                else:
                    assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-5), (name, key)
        configs = [json.loads((exp / name / "config.json").read_text())
                   for exp in (stacked, single)]
        assert [{**c, "run-dir": ""} for c in configs] == [{**configs[1], "run-dir": ""}] * 2
    accs = {name: rows(stacked / name)[-1]["test-accuracy"] for name in cells}
    assert len(set(accs.values())) > 4  # the cells really differ from each other


def test_cells_that_train_alike_share_one_batched_call_and_equal_one_by_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """Strategies with the same local SGD settings x 2 runs each, with and without client
    terms (FedProx's mu, WSA's target and SCAFFOLD's c - c_i per run). On each node and round
    all twelve runs train in ONE batched call, the runs without a term getting its idle
    inputs: every run's numbers are the bits of its one-by-one run (only the shared node
    statistics, padding and time, differ). The synthetic set is drawn from the seed, so the
    runs differ in their partition (alpha) instead: runs of other seeds of it cannot share a
    train set."""
    calls = count_fused_calls(monkeypatch)
    tasks = record_batched_tasks(monkeypatch)
    strategies = ["fedavg", "fednova", {"strategy": "fedavg", "server-opt": "adam"},
                  {"strategy": "fedprox", "prox-mu": 0.1}, {"strategy": "fedwsa", "wsa-beta": 0.3},
                  "scaffold"]
    stacked, single = run_both(tmp_path, strategies, [0], {"alpha": [0.3, 1.0]},
                               {"num-server-rounds": 3})
    assert calls == [12] * 3 * 2  # 3 rounds x 2 nodes
    # Each joint call holds every run's model and shared inputs once, not once per client,
    # and SCAFFOLD's c - c_i for its 2 runs' 4 clients plus ONE zero row for the 20 others.
    scaffold = {f"scaffold/{n}": 5 for n in ("conv1.weight", "conv1.bias", "conv2.weight",
                                           "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight",
                                           "fc2.bias", "fc3.weight", "fc3.bias")}
    assert tasks == [{"clients": 24, "models": 12, "shared": 12, "hyper": None,
                      "run_of": tuple(r for r in range(12) for _ in range(2)),
                      "table": scaffold}] * 6
    names = sorted(p.name for p in single.iterdir() if (p / "config.json").exists())
    assert len(names) == 12
    for name in names:
        drop = {"node-wasted-fraction"}
        got = [{k: v for k, v in r.items() if k not in drop} for r in rows(stacked / name)]
        want = [{k: v for k, v in r.items() if k not in drop} for r in rows(single / name)]
        assert got == want, name
    assert len({rows(stacked / n)[-1]["test-accuracy"] for n in names}) > 6


def test_scaffold_fused_with_runs_at_another_lr_keeps_its_own_lr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """SCAFFOLD's correction steps with the trainer's scalar lr: a scaffold cell trains with a
    fedavg cell of another lr (its c - c_i idle), never with a scaffold cell of another lr;
    fedwsa-scaffold (WSA's loss, then SCAFFOLD's step) joins the scaffold cell of its lr,
    whose union lists SCAFFOLD first (the two terms define other hooks). Every cell agrees
    with its one-by-one run."""
    calls = count_fused_calls(monkeypatch)
    stacked, single = run_both(tmp_path, ["scaffold", "fedwsa-scaffold", "fedavg"], [0],
                               {"lr": [0.01, 0.03]})
    # Per node and round: scaffold, fedwsa-scaffold and both fedavg cells at 0.01; scaffold
    # and fedwsa-scaffold at 0.03. 2 rounds x 2 nodes.
    assert calls == [4, 2] * 2 * 2
    names = sorted(p.name for p in single.iterdir() if (p / "config.json").exists())
    assert len(names) == 6
    for name in names:
        for g, w in zip(rows(stacked / name), rows(single / name), strict=True):
            for k in set(w) - {"node-wasted-fraction"}:
                want = w[k] if w[k] is None else pytest.approx(w[k], rel=1e-4, abs=1e-5)
                assert g[k] == want, (name, k)


def test_runs_with_other_local_epochs_train_in_one_call_bit_for_bit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """FedAvg and FedNova (whose normaliser counts each client's steps) at 1 and 3 local
    epochs: the four runs train in one batched call per node and round, each client making its
    own run's number of steps, and every run's numbers are the bits of its one-by-one run."""
    calls = count_fused_calls(monkeypatch)
    stacked, single = run_both(tmp_path, ["fedavg", "fednova"], [0], {"local-epochs": [1, 3]},
                               {"momentum": 0.5})
    assert calls == [4] * 2 * 2  # 2 rounds x 2 nodes
    names = sorted(p.name for p in single.iterdir() if (p / "config.json").exists())
    assert len(names) == 4
    drop = {"node-wasted-fraction"}
    for name in names:
        got = [{k: v for k, v in r.items() if k not in drop} for r in rows(stacked / name)]
        want = [{k: v for k, v in r.items() if k not in drop} for r in rows(single / name)]
        assert got == want, name
    finals = {name: rows(single / name)[-1]["test-loss"] for name in names}
    assert len(set(finals.values())) == 4  # epochs (and FedNova's normaliser) change the runs


def test_a_failing_joint_call_is_split_until_the_failure_finds_its_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """A joint call that raises (here: whenever the lr-0.05 run is in it) is split in halves:
    the two runs of the good half still train together, the other two alone, and every run
    ends as its one-by-one run does."""
    import fedwsa.clients.client_app as client_app

    calls = count_fused_calls(monkeypatch)
    counting = client_app.train_fused

    def broken_with_lr_0_05(runs):  # type: ignore[no-untyped-def]
        if any(config.lr == 0.05 for _, config in runs):
            raise RuntimeError("joint call failed")
        return counting(runs)

    monkeypatch.setattr(client_app, "train_fused", broken_with_lr_0_05)
    stacked, single = run_both(tmp_path, ["fedavg"], [0], {"lr": [0.01, 0.02, 0.03, 0.05]})
    assert calls == [2] * 2 * 2  # [0.01, 0.02] per node and round; 0.03 and 0.05 alone
    names = sorted(p.name for p in single.iterdir() if (p / "config.json").exists())
    assert len(names) == 4
    for name in names:
        got, want = rows(stacked / name), rows(single / name)
        assert [r["round"] for r in got] == [0, 1, 2], name
        for g, w in zip(got, want, strict=True):
            assert g["test-accuracy"] == pytest.approx(w["test-accuracy"], abs=1e-6), name
            assert g["test-loss"] == pytest.approx(w["test-loss"], rel=1e-4), name


def count_evaluation_passes(monkeypatch: pytest.MonkeyPatch, per_pass: int) -> list[int]:
    """Models per central-evaluation pass, with up to ``per_pass`` stacked in one."""
    import fedwsa.server.evaluation as evaluation

    passes: list[int] = []
    real = evaluation._evaluate_stack

    def counting(model, params, *args):  # type: ignore[no-untyped-def]
        passes.append(len(params))
        return real(model, params, *args)

    monkeypatch.setattr(evaluation, "models_per_pass", lambda device: per_pass)
    monkeypatch.setattr(evaluation, "_evaluate_stack", counting)
    return passes


def test_a_cell_whose_evaluation_fails_is_set_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """A stacked evaluation pass that raises is redone run by run: only the run whose own
    evaluation fails is set aside, the others keep every row."""
    import fedwsa.server.app as server_app
    import fedwsa.server.evaluation as evaluation

    monkeypatch.setattr(evaluation, "models_per_pass", lambda device: 16)
    real = server_app.CellRun.evaluate

    def broken_for_lr_0_05(self):  # type: ignore[no-untyped-def]
        if self.config.lr == 0.05 and self.writer.rows:
            raise RuntimeError("evaluation failed")
        return real(self)

    def stacked_pass_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("out of memory")

    monkeypatch.setattr(server_app.CellRun, "evaluate", broken_for_lr_0_05)
    monkeypatch.setattr(server_app, "evaluate_many", stacked_pass_fails)
    spec = build_spec(["fedavg"], [0], {"lr": [0.01, 0.05]}, {**BASE, "num-server-rounds": 2})
    result = run_grid(spec, tmp_path / "exp", progress="off",
                      simulate_cells=lambda cs, n, g: run_cells_in_process(cs, num_nodes=n))
    assert [(c.path.name, why) for c, why in result.failed] == [
        ("fedavg_lr=0.05_seed=0", "RuntimeError: evaluation failed")]
    assert [r["round"] for r in rows(tmp_path / "exp" / "fedavg_lr=0.01_seed=0")] == [0, 1, 2]
    assert [r["round"] for r in rows(tmp_path / "exp" / "fedavg_lr=0.05_seed=0")] == [0]


def test_runs_fuse_only_when_their_clients_train_alike() -> None:
    from fedwsa.clients.fused import FuseKey, fuse_key, fused_groups, joined
    from fedwsa.config import make_config
    from fedwsa.models import build_model
    from fedwsa.protocol import TrainRequest

    g = dict(build_model("simple-cnn", 10).named_parameters())

    def key(**keys):  # type: ignore[no-untyped-def]
        config = make_config({"dataset": "cifar10", **{k.replace("_", "-"): v
                                                       for k, v in keys.items()}})
        return fuse_key(config, TrainRequest(1, [0, 1], config.to_json(), g))

    def join(*keys):  # type: ignore[no-untyped-def]
        return fused_groups(keys) == [list(range(len(keys)))]

    assert key(strategy="fedavg", seed=0) == key(strategy="fednova", seed=1, lr=0.05)
    assert key(strategy="fedwsa", lr=0.01, momentum=0.5) == key(strategy="fedwsa", lr=0.1)
    assert not join(key(strategy="fedwsa", wsa_layers="conv1.weight"),
                    key(strategy="fedwsa", wsa_layers="fc3.weight"))  # other layers
    assert not join(key(strategy="scaffold", lr=0.01), key(strategy="scaffold", lr=0.02))
    assert join(key(strategy="scaffold", lr=0.01), key(strategy="fedavg", lr=0.02))  # c - c_i = 0
    # The union keeps each run's order of the terms of one hook; terms of other hooks (WSA's
    # loss, SCAFFOLD's after_step) may come in any order.
    assert join(key(strategy="scaffold"), key(strategy="fedwsa-scaffold"))
    assert joined(key(strategy="scaffold"), key(strategy="fedwsa-scaffold")).terms[0][0] == (
        "scaffold")

    def hand_key(order: str, hooks: dict[str, set[str]]) -> FuseKey:
        return FuseKey((), tuple((n, n) for n in order), frozenset("ab"), None,
                       tuple((n, frozenset(hooks[n])) for n in order))

    both_loss = {"a": {"loss"}, "b": {"loss", "outputs"}}
    assert joined(hand_key("ab", both_loss), hand_key("ba", both_loss)) is None
    apart = {"a": {"correct_grad"}, "b": {"loss", "outputs"}}
    assert joined(hand_key("ab", apart), hand_key("ba", apart)).terms == (("a", "a"), ("b", "b"))
    assert fused_groups([key(strategy="scaffold", lr=0.01), key(strategy="fedavg", lr=0.02),
                         key(strategy="scaffold", lr=0.02),
                         key(strategy="fedwsa", lr=0.02)]) == [[0, 1, 3], [2]]
    assert not join(key(batch_size=32), key(batch_size=64))
    assert key(local_epochs=1) == key(local_epochs=3, strategy="fednova")  # steps per client
    # Other client terms: the runs without a term get its idle inputs.
    niid_bench = [key(strategy=s) for s in ("fedavg", "fedprox", "scaffold", "fednova",
                                              "fedwsa", "cart")]
    assert join(*niid_bench)
    assert joined(niid_bench[0], niid_bench[1]).terms == niid_bench[1].terms
    # A run joins the first group it can: the two WSA layer choices part, fedavg joins the first.
    assert fused_groups([key(strategy="fedwsa", wsa_layers="conv1.weight"),
                         key(strategy="fedwsa", wsa_layers="fc3.weight"),
                         key(strategy="fedavg"), key(strategy="fedprox", batch_size=16)]
                        ) == [[0, 2], [1], [3]]
    assert key(trainer="sequential") is None and key(fail_rate=0.1) is None
    assert fused_groups([None, None]) == [[0], [1]]
    assert key(dataset="synthetic", seed=0) != key(dataset="synthetic", seed=1)


def test_a_diverging_cell_fails_honestly_and_the_others_go_on(
        tmp_path: Path, flower_identity: None, caplog: pytest.LogCaptureFixture) -> None:
    spec = build_spec(["fedavg"], [0], {"lr": [0.05, 1e9]}, BASE)
    with caplog.at_level("WARNING", logger="fedwsa.clients.fused"):
        result = run_grid(spec, tmp_path / "exp", progress="off",
                          simulate_cells=lambda cs, n, g: run_cells_in_process(cs, num_nodes=n))
    # The two lr cells train in one joint call: the node still logs each failed client.
    assert "run 1 of a joint call: client 0 failed in round 1: non-finite" in caplog.text
    good, bad = (tmp_path / "exp" / f"fedavg_lr={lr}_seed=0" for lr in ("0.05", "1000000000.0"))
    assert rows(good)[-1]["test-accuracy"] > 0.3 and rows(good)[-1]["clients-failed"] == 0
    last = rows(bad)[-1]
    # Every client diverged: each is recorded as failed and the global model was kept.
    assert last["clients-failed"] == last["clients-sampled"] == 4
    assert last["global-updated"] == 0
    # The run went through all its rounds but never updated its model: that is said, not
    # passed off as a finished run (issue 17: a distinct status, and compare reports it).
    assert json.loads((bad / "result.json").read_text())["status"] == "no-update"
    assert [(c.path.name, why) for c, why in result.failed] == [
        (bad.name, "no round updated the global model (every client failed)")]


def test_a_cell_whose_server_side_fails_is_set_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    import fedwsa.server.app as server_app

    real = server_app.CellRun.close_round

    def breaks_for_lr_0_05(self, server_round, metrics, evaluation):  # type: ignore[no-untyped-def]
        if self.config.lr == 0.05 and server_round == 2:
            raise RuntimeError("disk full")
        return real(self, server_round, metrics, evaluation)

    monkeypatch.setattr(server_app.CellRun, "close_round", breaks_for_lr_0_05)
    spec = build_spec(["fedavg"], [0], {"lr": [0.01, 0.05]}, {**BASE, "num-server-rounds": 3})
    result = run_grid(spec, tmp_path / "exp", progress="off",
                      simulate_cells=lambda cs, n, g: run_cells_in_process(cs, num_nodes=n))
    assert [(c.path.name, why) for c, why in result.failed] == [
        ("fedavg_lr=0.05_seed=0", "RuntimeError: disk full")]
    assert (tmp_path / "exp" / "fedavg_lr=0.01_seed=0" / "result.json").exists()
    assert [r["round"] for r in rows(tmp_path / "exp" / "fedavg_lr=0.05_seed=0")] == [0, 1]


def test_bundles_round_trip_and_carry_per_run_errors() -> None:
    from flwr.app import ConfigRecord, RecordDict

    parts = {"cell0": RecordDict({"config": ConfigRecord({"x": 1})}),
             "cell1": error_content("ValueError: bad data")}
    back = unbundle(bundle(parts))
    assert list(back) == ["cell0", "cell1"]
    assert back["cell0"].config_records["config"]["x"] == 1
    assert error_of(back["cell1"]) == "ValueError: bad data" and error_of(back["cell0"]) is None
    with pytest.raises(ValueError, match="'/'"):
        bundle({"a/b": parts["cell0"]})


def _finished_rounds(exp: Path) -> int:
    total = 0
    for run in exp.glob("*_seed=*"):
        ckpt = run / "metrics.jsonl"
        if ckpt.exists():
            total += max(0, len(ckpt.read_text().splitlines()) - 1)
    return total


def test_a_sigkilled_stacked_grid_resumes_every_cell(tmp_path: Path) -> None:
    """A real ``fedwsa compare`` (Flower's simulation engine, Ray) killed with SIGKILL in the
    middle of a stacked grid; the same command again resumes every cell to the metrics of an
    uninterrupted stacked grid."""
    base = ("dataset='synthetic' num-clients=4 num-server-rounds=4 batch-size=64 "
            "partition='dirichlet' alpha=0.3")
    argv = ["--strategies", "fedavg,scaffold", "--seeds", "0,1", "-c", base,
            "--progress", "lines"]
    ref = tmp_path / "ref"
    run_grid(build_spec(["fedavg", "scaffold"], [0, 1], {},
                        {**BASE, "num-server-rounds": 4}), ref, progress="off",
             simulate_cells=lambda cs, n, g: run_cells_in_process(cs, num_nodes=n))
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "fedwsa.cli", "compare", *argv, "--out", str(exp)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _finished_rounds(exp) < 6 and time.monotonic() < deadline:
            assert proc.poll() is None, "compare ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not all((run / "result.json").exists() for run in exp.glob("*_seed=*"))

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "to resume" in again.stderr
    for run in sorted(ref.glob("*_seed=*")):
        assert rows(exp / run.name) == rows(run), run.name


def test_a_task_of_several_runs_names_each_clients_run() -> None:
    """Per-run rows without each client's run (or with too few entries) would pair clients with
    the wrong model: refused when the task is built."""
    import torch

    from fedwsa.algorithms.base import ClientInputs
    from fedwsa.clients.trainer import CohortTask

    models = {"w": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match="run_params and run_of"):
        CohortTask(1, [0, 1], {"w": torch.zeros(3)}, run_params=models)
    with pytest.raises(ValueError, match="run_of has 1 entries for 2 clients"):
        CohortTask(1, [0, 1], {"w": torch.zeros(3)}, run_params=models, run_of=(0,))
    with pytest.raises(ValueError, match="run_hyper needs run_of"):
        CohortTask(1, [0, 1], {"w": torch.zeros(3)}, run_hyper={"momentum": torch.zeros(2)})
    hyper = {"momentum": torch.tensor([0.9, 0.0])}
    task = CohortTask(1, [0, 1, 2], {"w": torch.zeros(3)}, run_params=models, run_of=(0, 1, 1),
                      run_hyper=hyper)
    part = task.subset([2, 0])
    assert part.run_of == (1, 0)
    assert part.run_params is models and part.run_hyper is hyper  # per run: kept whole
    # A table of per-client rows (clients 1 and 2 share row 1): each key names every client's
    # row, and a subset keeps the table and maps the rows.
    table = ClientInputs(per_client={"t/a": torch.tensor([[1.0], [2.0]]),
                                     "t/b": torch.tensor([[5.0], [6.0], [7.0]])})
    with pytest.raises(ValueError, match=r"own_of names \['t/a'\], the per-client inputs are"):
        CohortTask(1, [0, 1, 2], {"w": torch.zeros(3)}, table, own_of={"t/a": (0, 1, 1)})
    with pytest.raises(ValueError, match=r"own_of of \['t/b'\] has no row for some of the 3"):
        CohortTask(1, [0, 1, 2], {"w": torch.zeros(3)}, table,
                   own_of={"t/a": (0, 1, 1), "t/b": (0, 1)})
    with pytest.raises(ValueError, match=r"own_of of \['t/a'\] names rows its table does not"):
        CohortTask(1, [0, 1, 2], {"w": torch.zeros(3)}, table,
                   own_of={"t/a": (0, 1, 2), "t/b": (0, 1, 2)})
    shared_rows = CohortTask(1, [0, 1, 2], {"w": torch.zeros(3)}, table,
                             own_of={"t/a": (0, 1, 1), "t/b": (2, 0, 1)})
    got = shared_rows.own_rows([2, 0])
    assert got["t/a"].tolist() == [[2.0], [1.0]] and got["t/b"].tolist() == [[6.0], [7.0]]
    part = shared_rows.subset([2, 1])
    assert part.inputs is table and part.own_of == {"t/a": (1, 1), "t/b": (1, 0)}
    assert {n: v.tolist() for n, v in part.own_rows([0, 1]).items()} == \
        {"t/a": [[2.0], [2.0]], "t/b": [[6.0], [5.0]]}
